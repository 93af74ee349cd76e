use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use orch_core::{
    Capability, DefaultPluginRegistry, Error, MockPlugin, Plugin, PluginRegistry, TaskContext,
    TaskError, TaskSpec, TaskStatus,
};

use crate::{backend, config, orch};

struct Upper {
    cleanups: Arc<AtomicUsize>,
}

#[async_trait]
impl Plugin for Upper {
    fn name(&self) -> &str {
        "upper"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn description(&self) -> &str {
        "upper-cases a string"
    }
    async fn initialize(&self, config: Value) -> orch_core::Result<()> {
        if config.get("fail").is_some() {
            return Err(Error::Plugin {
                name: "upper".into(),
                message: "bad config".into(),
            });
        }
        Ok(())
    }
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        if input.is_null() {
            return Err(TaskError::fatal("input must not be null"));
        }
        Ok(())
    }
    async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let text = input
            .as_str()
            .ok_or_else(|| TaskError::fatal("expected a string"))?;
        if let Some(storage) = ctx.storage() {
            storage
                .store(
                    &format!("results/{}", ctx.task_id()),
                    text.as_bytes().to_vec(),
                )
                .await?;
        }
        Ok(json!(text.to_uppercase()))
    }
    async fn cleanup(&self) -> orch_core::Result<()> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::engine("text"), Capability::named("pure")]
    }
}

#[tokio::test(start_paused = true)]
async fn a_registered_plugin_serves_its_core_ids_and_uses_the_kv_space() {
    let orch = orch(backend(), config()).await;
    let cleanups = Arc::new(AtomicUsize::new(0));
    orch.register_plugin(
        Arc::new(Upper {
            cleanups: cleanups.clone(),
        }),
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(orch.engines(), ["text"]);
    let task = orch
        .dispatch_and_wait(TaskSpec::new("text").payload(json!("hello")))
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.result, Some(json!("HELLO")));
    let stored = orch
        .backend()
        .retrieve(&format!("results/{}", task.id))
        .await
        .unwrap();
    assert_eq!(stored, Some(b"hello".to_vec()));
    let bad = orch
        .dispatch_and_wait(TaskSpec::new("text").payload(json!(5)))
        .await
        .unwrap();
    assert_eq!((bad.status, bad.attempt), (TaskStatus::Failed, 1));
    let refused = orch
        .dispatch_and_wait(TaskSpec::new("text").max_attempts(3))
        .await
        .unwrap();
    assert_eq!((refused.status, refused.attempt), (TaskStatus::Failed, 1));
    assert_eq!(
        refused.error.as_deref(),
        Some("invalid input: input must not be null")
    );
    let removed = orch.plugins().unregister("upper").await.unwrap();
    assert_eq!(removed.name(), "upper");
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn registry_contract() {
    let registry = DefaultPluginRegistry::new();
    let cleanups = Arc::new(AtomicUsize::new(0));
    registry
        .register(
            Arc::new(Upper {
                cleanups: cleanups.clone(),
            }),
            Value::Null,
        )
        .await
        .unwrap();
    assert!(matches!(
        registry.register(Arc::new(Upper { cleanups: cleanups.clone() }), Value::Null).await,
        Err(Error::PluginExists(name)) if name == "upper"
    ));
    assert!(matches!(
        registry.get("nope"),
        Err(Error::PluginNotFound(_))
    ));
    assert_eq!(registry.get("upper").unwrap().version(), "1.0.0");
    let mut mock = MockPlugin::new();
    mock.expect_name().return_const("a-mock".to_owned());
    mock.expect_initialize().times(1).returning(|_| Ok(()));
    mock.expect_cleanup().times(1).returning(|| Ok(()));
    registry
        .register(Arc::new(mock), json!({"k": 1}))
        .await
        .unwrap();
    let names: Vec<String> = registry
        .list()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names, ["a-mock", "upper"]);
    registry.unregister("a-mock").await.unwrap();
    assert!(matches!(
        registry.unregister("a-mock").await,
        Err(Error::PluginNotFound(_))
    ));
    let failing = DefaultPluginRegistry::new();
    let err = failing
        .register(Arc::new(Upper { cleanups }), json!({"fail": true}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad config"));
    assert!(
        failing.list().is_empty(),
        "a plugin whose initialize failed must not be registered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_plugin_whose_core_is_taken_is_refused_without_a_trace() {
    let orch = orch(backend(), config()).await;
    orch.register_engine(
        "text",
        orch_core::processor_fn(|_c, i| async move { Ok(i) }),
    )
    .unwrap();
    let cleanups = Arc::new(AtomicUsize::new(0));
    let err = orch
        .register_plugin(
            Arc::new(Upper {
                cleanups: cleanups.clone(),
            }),
            Value::Null,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::EngineExists(core) if core == "text"),
        "{err}"
    );
    assert!(
        orch.plugins().list().is_empty(),
        "a refused plugin stayed registered"
    );
    // The built-in engine still serves the core.
    let task = orch
        .dispatch_and_wait(TaskSpec::new("text").payload(json!("x")))
        .await
        .unwrap();
    assert_eq!(task.result, Some(json!("x")));
    orch.shutdown(Duration::from_secs(1)).await;
}
