//! Per-call overhead of a plugin engine: the echo example plugin called through
//! [`Plugin::execute`] in process and in a child process, against a native Rust engine doing
//! the same JSON work and a bare `spawn_blocking` round trip.
//!
//! `cargo bench -p orch-plugins --bench plugin_call` (builds the fixture plugins in release
//! into `target/plugin-fixtures` first).

use std::time::Duration;

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::RStr;
use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use orch_core::{Capability, Plugin, TaskContext, TaskError, TaskId};
use orch_plugin_abi::{CallContext, HostServices, LogLevel, NeverCancelled, PluginModRef};
use orch_plugins::{Isolation, PluginOptions, load_plugin};
use serde_json::{Value, json};

#[allow(
    dead_code,
    reason = "the bench uses only the fixture builder of the test support"
)]
#[path = "../tests/plugins/support.rs"]
mod support;

/// The echo engine written as a native plugin: same JSON in and out, no FFI, no thread hop.
struct NativeEcho;

#[async_trait]
impl Plugin for NativeEcho {
    fn name(&self) -> &str {
        "native-echo"
    }
    fn version(&self) -> &str {
        "0"
    }
    fn description(&self) -> &str {
        "baseline"
    }
    async fn initialize(&self, _config: Value) -> orch_core::Result<()> {
        Ok(())
    }
    async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        Ok(json!({ "echo": input, "attempt": ctx.attempt() }))
    }
    async fn cleanup(&self) -> orch_core::Result<()> {
        Ok(())
    }
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::engine("echo")]
    }
}

extern "C" fn ignore_log(_plugin: RStr<'_>, _level: LogLevel, _message: RStr<'_>) {}

fn payload() -> Value {
    json!({ "order": 42, "customer": "c-1001", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}] })
}

fn bench(c: &mut Criterion) {
    let release = !cfg!(debug_assertions);
    let dir = support::fixtures_built(release);
    let path = support::plugin_in(&dir, "echo_engine");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let options =
        PluginOptions::default().with_host_program(env!("CARGO_BIN_EXE_orch-plugin-host"));
    let (in_process, process) = runtime.block_on(async {
        let in_process = load_plugin(&path, &options).await.expect("echo loads");
        in_process.initialize(Value::Null).await.expect("init");
        let process = load_plugin(&path, &options.clone().with_isolation(Isolation::Process))
            .await
            .expect("echo loads in a child");
        process.initialize(Value::Null).await.expect("init");
        (in_process, process)
    });
    let ctx = TaskContext::new(TaskId::new(), "echo");
    let input = payload();

    // The boundary alone: the same library's engine called on this thread, JSON both ways
    // (the plugin validates, then executes), as the adapter does inside its blocking task.
    let module = lib_header_from_path(&path)
        .and_then(|header| header.init_root_module::<PluginModRef>())
        .expect("echo loads");
    let host = HostServices {
        log: ignore_log,
        max_log_level: LogLevel::Error,
    };
    let engine = module.new_engine()(host, RStr::from_str("null"))
        .into_result()
        .expect("engine");

    let mut group = c.benchmark_group("plugin_call");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("ffi_sync_json", |b| {
        b.iter(|| {
            let text = input.to_string();
            let call = CallContext::new("task", "echo", 1, 1, &NeverCancelled);
            engine
                .validate(RStr::from_str(&text))
                .into_result()
                .expect("valid");
            let output = engine
                .execute(&call, RStr::from_str(&text))
                .into_result()
                .expect("echoed");
            serde_json::from_str::<Value>(output.as_str()).expect("json")
        })
    });
    group.bench_function("native_engine", |b| {
        b.to_async(&runtime)
            .iter(|| NativeEcho.execute(ctx.clone(), input.clone()))
    });
    group.bench_function("spawn_blocking_only", |b| {
        b.to_async(&runtime)
            .iter(|| async { tokio::task::spawn_blocking(|| ()).await })
    });
    group.bench_function("in_process", |b| {
        b.to_async(&runtime)
            .iter(|| in_process.execute(ctx.clone(), input.clone()))
    });
    group.bench_function("process_isolated", |b| {
        b.to_async(&runtime)
            .iter(|| process.execute(ctx.clone(), input.clone()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
