//! The child side of process isolation: what `orch-plugin-host <plugin file>` runs. Loads the
//! plugin with the same checks as the in-process loader, then serves requests from stdin, one
//! thread per call, replies on stdout (the protocol is described in `protocol.rs`).
//!
//! The `orch-plugin-host` binary is `run(std::env::args().skip(1))`. An application that does
//! not want to ship a second binary can serve as its own child:
//!
//! ```no_run
//! use orch_plugins::PluginOptions;
//!
//! fn main() -> std::process::ExitCode {
//!     let mut args = std::env::args().skip(1);
//!     if args.next().as_deref() == Some("--orch-plugin-child") {
//!         return orch_plugins::child::run(args);
//!     }
//!     // The application proper loads its plugins with these options:
//!     let _options = PluginOptions::process()
//!         .with_host_program(std::env::current_exe().expect("own path"))
//!         .with_host_args(["--orch-plugin-child"]);
//!     std::process::ExitCode::SUCCESS
//! }
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, LineWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use abi_stable::std_types::RStr;
use orch_plugin_abi::{CancelSignal, EngineBox, HostServices, LogLevel};
use parking_lot::Mutex;

use crate::call_threads::CallThreads;
use crate::calls::{CallError, call_engine, cleanup_engine};
use crate::library;
use crate::protocol::{Outcome, Request, Response};

type Output = Arc<Mutex<LineWriter<File>>>;

/// Most threads the child starts for calls; the host's per-plugin limit is normally lower.
const CHILD_THREADS: usize = 64;

/// Where protocol lines go: set once at startup.
static OUTPUT: OnceLock<Output> = OnceLock::new();

fn send(response: &Response) {
    if let Some(output) = OUTPUT.get() {
        // A host that went away ends the child on the next read; nothing to do here.
        if let Ok(line) = serde_json::to_string(response) {
            let mut output = output.lock();
            let _ = writeln!(output, "{line}");
        }
    }
}

extern "C" fn child_log(_plugin: RStr<'_>, level: LogLevel, message: RStr<'_>) {
    let _ = std::panic::catch_unwind(|| {
        send(&Response::Log {
            level: level.as_str().to_owned(),
            message: message.as_str().to_owned(),
        })
    });
}

struct FlagSignal(Arc<AtomicBool>);

impl CancelSignal for FlagSignal {
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Takes stdout for the protocol and points file descriptor 1 at stderr, so that a plugin's
/// own `println!` cannot corrupt the protocol.
#[cfg(unix)]
fn protocol_output() -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let stdout = std::io::stdout();
    let _lock = stdout.lock();
    let protocol = File::from(std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned()?);
    // SAFETY: dup2 on two descriptors this process owns (stderr and stdout); no Rust object
    // owns fd 1 exclusively (`Stdout` is only a handle to it).
    #[allow(unsafe_code, reason = "no safe std API redirects a file descriptor")]
    let status = unsafe { libc::dup2(std::io::stderr().as_raw_fd(), stdout.as_raw_fd()) };
    if status < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(protocol)
}

#[cfg(not(unix))]
fn protocol_output() -> std::io::Result<File> {
    use std::os::windows::io::AsHandle;
    Ok(File::from(
        std::io::stdout().as_handle().try_clone_to_owned()?,
    ))
}

/// Runs the child until the host closes its stdin. `args` are the program's arguments after
/// its name: the plugin file's path. Takes over stdout for the protocol (a plugin's own output
/// goes to stderr). Exit codes: 0 when the host closed stdin, 2 on a usage or setup error, 3
/// when the plugin was refused (the refusal was sent to the host first).
pub fn run(mut args: impl Iterator<Item = String>) -> ExitCode {
    let Some(path) = args.next() else {
        eprintln!("usage: orch-plugin-host <plugin file>");
        return ExitCode::from(2);
    };
    let output = match protocol_output() {
        Ok(file) => Arc::new(Mutex::new(LineWriter::new(file))),
        Err(error) => {
            eprintln!("orch-plugin-host: cannot set up stdout: {error}");
            return ExitCode::from(2);
        }
    };
    let _ = OUTPUT.set(output);
    let (library, metadata) = match library::open(Path::new(&path)) {
        Ok(loaded) => loaded,
        Err(error) => {
            send(&Response::Refused {
                error: error.to_wire(),
            });
            return ExitCode::from(3);
        }
    };
    let metadata_name = metadata.name.clone();
    send(&Response::Hello { metadata });

    // Calls run on reused threads (the host bounds how many run at once).
    let threads = CallThreads::new(&metadata_name, CHILD_THREADS);
    let engine: Arc<Mutex<Option<Arc<EngineBox>>>> = Arc::default();
    let calls: Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>> = Arc::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(error) => {
                eprintln!("orch-plugin-host: bad request: {error}");
                continue;
            }
        };
        match request {
            Request::Init {
                id,
                config,
                max_log_level,
            } => {
                let host = HostServices {
                    log: child_log,
                    max_log_level: LogLevel::parse(&max_log_level).unwrap_or(LogLevel::Info),
                };
                let config = config.to_string();
                let created = (library.module.new_engine())(host, RStr::from_str(&config))
                    .into_result()
                    .map(|created| *engine.lock() = Some(Arc::new(created)))
                    .map(|()| serde_json::Value::Null)
                    .map_err(|error| CallError::host(error.message().to_owned(), false));
                send(&Response::Reply {
                    id,
                    outcome: created.into(),
                });
            }
            Request::Execute { id, call, input } => {
                let Some(current) = engine.lock().clone() else {
                    send(&Response::Reply {
                        id,
                        outcome: Outcome::Err(CallError::host("plugin is not initialized", false)),
                    });
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                calls.lock().insert(id, flag.clone());
                let calls = calls.clone();
                // The reply is sent from the thread; nobody waits on the returned receiver.
                drop(threads.run(move || {
                    let result =
                        call_engine(&current, &call, &FlagSignal(flag), &input.to_string());
                    calls.lock().remove(&id);
                    send(&Response::Reply {
                        id,
                        outcome: result.into(),
                    });
                }));
            }
            Request::Cancel { id } => {
                if let Some(flag) = calls.lock().get(&id) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Request::Cleanup { id } => {
                let taken = engine.lock().take();
                let result = match taken {
                    Some(current) => cleanup_engine(&current).map(|()| serde_json::Value::Null),
                    None => Ok(serde_json::Value::Null),
                };
                send(&Response::Reply {
                    id,
                    outcome: result.into(),
                });
            }
        }
    }
    ExitCode::SUCCESS
}
