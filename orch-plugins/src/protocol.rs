//! The JSON-lines protocol between the host and `orch-plugin-host`, the child process of a
//! process-isolated plugin. One JSON object per line; requests carry an `id` that the reply
//! repeats, so calls may overlap.
//!
//! ```text
//! child  -> host  {"type":"hello","metadata":{...}}            once, after loading the plugin
//! child  -> host  {"type":"refused","error":{...}}             instead, then the child exits
//! host   -> child {"type":"init","id":1,"config":{},"max_log_level":"info"}
//! host   -> child {"type":"execute","id":2,"call":{...},"input":{}}
//! host   -> child {"type":"cancel","id":2}                     the attempt timed out
//! host   -> child {"type":"cleanup","id":3}
//! child  -> host  {"type":"reply","id":2,"outcome":{"ok":{}}}  or {"err":{...}}
//! child  -> host  {"type":"log","level":"info","message":"..."}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::{CallError, CallInfo};
use crate::error::WireLoadError;
use crate::library::PluginMetadata;

/// A message from the host to the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Request {
    Init {
        id: u64,
        config: Value,
        max_log_level: String,
    },
    Execute {
        id: u64,
        call: CallInfo,
        input: Value,
    },
    Cancel {
        id: u64,
    },
    Cleanup {
        id: u64,
    },
}

/// A message from the child to the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Response {
    Hello { metadata: PluginMetadata },
    Refused { error: WireLoadError },
    Reply { id: u64, outcome: Outcome },
    Log { level: String, message: String },
}

/// The result of one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Ok(Value),
    Err(CallError),
}

impl From<Result<Value, CallError>> for Outcome {
    fn from(result: Result<Value, CallError>) -> Self {
        match result {
            Ok(value) => Outcome::Ok(value),
            Err(error) => Outcome::Err(error),
        }
    }
}

impl From<Outcome> for Result<Value, CallError> {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok(value) => Ok(value),
            Outcome::Err(error) => Err(error),
        }
    }
}
