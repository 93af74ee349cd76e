//! An orch engine plugin that echoes its input, written as a plugin author would write one.
//!
//! Build it with `cargo build -p echo-engine`; the host loads `target/debug/libecho_engine.so`
//! (`echo_engine.dll` on Windows, `libecho_engine.dylib` on macOS).
//!
//! Input: any JSON value except `null`. Output: `{"echo": <input>, "attempt": <n>}`, or the
//! input with `"prefix"` from the configuration prepended when the input is a string.

use orch_plugin_abi::serde_json::{Value, json};
use orch_plugin_abi::{CallContext, Engine, PluginError, export_plugin, info};

/// The engine: remembers an optional prefix from its configuration.
struct Echo {
    prefix: String,
}

impl Engine for Echo {
    fn validate(&self, input: &Value) -> Result<(), PluginError> {
        if input.is_null() {
            return Err(PluginError::invalid_input("nothing to echo"));
        }
        Ok(())
    }

    fn execute(&self, ctx: &CallContext<'_>, input: Value) -> Result<Value, PluginError> {
        let echo = match input {
            Value::String(text) => Value::String(format!("{}{text}", self.prefix)),
            other => other,
        };
        Ok(json!({ "echo": echo, "attempt": ctx.attempt() }))
    }
}

export_plugin! {
    name: "echo",
    version: env!("CARGO_PKG_VERSION"),
    description: "returns its input",
    engines: ["echo"],
    engine: |config: Value| {
        let prefix = config.get("prefix").and_then(Value::as_str).unwrap_or_default();
        info!("echo engine ready (prefix {prefix:?})");
        Ok(Echo { prefix: prefix.to_owned() })
    },
}
