//! Per-call overhead of a plugin engine: the echo example plugin called through
//! [`Plugin::execute`] in process and in a child process, against a native Rust engine doing
//! the same JSON work and a bare `spawn_blocking` round trip.
//!
//! `cargo bench --bench plugins` (builds the fixture plugins in release into
//! `<target>/plugin-fixtures` first, with orch-plugins' own fixture builder). For process
//! isolation this bench binary serves as its own child process (`orch_plugins::child`), as an
//! application that ships no `orch-plugin-host` would.

mod support;

#[path = "../orch-plugins/tests/plugins/fixtures.rs"]
mod fixtures;

use std::process::ExitCode;
use std::time::Duration;

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::RStr;
use async_trait::async_trait;
use criterion::{Criterion, criterion_group};
use orch::{Capability, Plugin, TaskContext, TaskError, TaskId};
use orch_plugin_abi::{CallContext, HostServices, LogLevel, NeverCancelled, PluginModRef};
use orch_plugins::{Isolation, PluginOptions, load_plugin};
use serde_json::{Value, json};

/// The first argument that makes this binary the child process of a process-isolated plugin.
const CHILD_FLAG: &str = "--orch-plugin-child";

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
    async fn initialize(&self, _config: Value) -> orch::Result<()> {
        Ok(())
    }
    async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        Ok(json!({ "echo": input, "attempt": ctx.attempt() }))
    }
    async fn cleanup(&self) -> orch::Result<()> {
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

fn plugin_call(c: &mut Criterion) {
    let release = !cfg!(debug_assertions);
    let path = fixtures::plugin_in(&fixtures::fixtures_built(release), "echo_engine");
    let runtime = support::runtime(2);
    let options = PluginOptions::default()
        .with_host_program(std::env::current_exe().expect("the bench's own path"))
        .with_host_args([CHILD_FLAG]);
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

criterion_group!(benches, plugin_call);

/// `criterion_main!`, after serving as a plugin's child process when started as one.
fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(CHILD_FLAG) {
        return orch_plugins::child::run(args);
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    ExitCode::SUCCESS
}
