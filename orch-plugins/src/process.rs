//! A plugin run in a child process (`orch-plugin-host`), the host side.
//!
//! The child loads the plugin file and serves JSON-lines requests (see
//! [`protocol`](crate::protocol)). One reader task per child routes replies to the waiting
//! calls. When the child dies (segfault, abort, killed from outside), every call in flight
//! fails with a retryable error and a new child is started, initialized with the same config:
//! by a supervisor task after a delay that doubles while children keep dying
//! ([`PluginOptions::restart`](crate::PluginOptions::restart)), or by the next call, whichever
//! comes first.
//! A call that is cancelled (timeout, cancel) is told so; if it is still running after
//! [`kill_grace`](crate::PluginOptions::kill_grace), the child is killed. A line longer than
//! [`max_message_bytes`](crate::PluginOptions::max_message_bytes) is never buffered whole: the
//! child is stopped and the calls in flight fail saying why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orch_core::{TaskContext, TaskError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::calls::{CallError, CallInfo, current_max_level, emit_log};
use crate::error::LoadError;
use crate::library::PluginMetadata;
use crate::options::PluginOptions;
use crate::protocol::{Outcome, Request, Response};

/// One incarnation of the child process.
struct Child {
    plugin: String,
    /// The child's process id.
    pid: Option<u32>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    /// Calls waiting for a reply, by request id. Drained (under this lock) when the child dies,
    /// so a call registered afterwards sees `exited` instead of waiting forever.
    pending: parking_lot::Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    next_id: AtomicU64,
    /// Asks the reader task to kill the child.
    kill: CancellationToken,
    /// Fired once the child is gone.
    exited: CancellationToken,
    /// How it ended, once it has.
    exit: parking_lot::Mutex<Option<String>>,
}

impl Child {
    /// Whether new calls may go to this child (it has not died and is not being killed).
    fn is_alive(&self) -> bool {
        !self.exited.is_cancelled() && !self.kill.is_cancelled()
    }

    fn is_pending(&self, id: u64) -> bool {
        self.pending.lock().contains_key(&id)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn write(&self, request: &Request) -> Result<(), CallError> {
        let mut line = serde_json::to_string(request)
            .map_err(|error| CallError::host(format!("cannot encode request: {error}"), false))?;
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        let written = match stdin.write_all(line.as_bytes()).await {
            Ok(()) => stdin.flush().await,
            Err(error) => Err(error),
        };
        written.map_err(|error| CallError::host(format!("plugin process is gone ({error})"), true))
    }

    /// Sends a request and returns the receiver of its reply.
    async fn request(
        &self,
        id: u64,
        request: &Request,
    ) -> Result<oneshot::Receiver<Outcome>, CallError> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if !self.is_alive() {
                return Err(CallError::host("plugin process is gone", true));
            }
            pending.insert(id, sender);
        }
        if let Err(error) = self.write(request).await {
            self.pending.lock().remove(&id);
            return Err(error);
        }
        Ok(receiver)
    }

    async fn call(&self, request: Request, id: u64) -> Result<Value, CallError> {
        let receiver = self.request(id, &request).await?;
        receive(receiver).await
    }

    async fn init(&self, config: &Value) -> Result<(), CallError> {
        let id = self.next_id();
        let request = Request::Init {
            id,
            config: config.clone(),
            max_log_level: current_max_level().as_str().to_owned(),
        };
        self.call(request, id).await.map(drop)
    }

    fn handle_line(&self, line: &str) {
        match serde_json::from_str::<Response>(line) {
            Ok(Response::Reply { id, outcome }) => {
                if let Some(sender) = self.pending.lock().remove(&id) {
                    let _ = sender.send(outcome);
                }
            }
            Ok(Response::Log { level, message }) => {
                let level = orch_plugin_abi::LogLevel::parse(&level)
                    .unwrap_or(orch_plugin_abi::LogLevel::Info);
                emit_log(&self.plugin, level, &message);
            }
            Ok(other) => tracing::debug!(plugin = %self.plugin, ?other, "unexpected message"),
            Err(error) => {
                tracing::warn!(plugin = %self.plugin, %error, "plugin process sent a bad line")
            }
        }
    }

    /// Marks the child gone and fails every call in flight with `message`.
    fn fail_all(&self, message: &str) {
        let mut pending = self.pending.lock();
        self.exited.cancel();
        for (_, sender) in pending.drain() {
            let _ = sender.send(Outcome::Err(CallError::host(message.to_owned(), true)));
        }
    }
}

/// The child's stdout, a line at a time, each at most `max` bytes: a longer line is refused
/// as soon as it passes the bound, having buffered no more than that.
struct Lines {
    reader: BufReader<ChildStdout>,
    max: usize,
    line: Vec<u8>,
}

/// Why [`Lines::next_line`] gave no line.
enum LineError {
    /// The line passed the bound.
    TooLong(usize),
    /// Reading failed, or the line is not UTF-8.
    Io(std::io::Error),
}

impl Lines {
    fn new(stdout: ChildStdout, max: usize) -> Self {
        Lines {
            reader: BufReader::new(stdout),
            max,
            line: Vec::new(),
        }
    }

    /// The next line without its `\n` (and `\r`), `None` at the end of the output.
    /// Cancel-safe: a partly read line is kept for the next call.
    async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            let available = self.reader.fill_buf().await.map_err(LineError::Io)?;
            if available.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (taken, done) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (end, true),
                None => (available.len(), false),
            };
            if self.line.len() + taken > self.max {
                return Err(LineError::TooLong(self.max));
            }
            self.line.extend_from_slice(&available[..taken]);
            self.reader.consume(if done { taken + 1 } else { taken });
            if done {
                break;
            }
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let line = std::mem::take(&mut self.line);
        String::from_utf8(line)
            .map(Some)
            .map_err(|e| LineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

async fn receive(receiver: oneshot::Receiver<Outcome>) -> Result<Value, CallError> {
    match receiver.await {
        Ok(outcome) => outcome.into(),
        Err(_) => Err(CallError::host("plugin process is gone", true)),
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGILL => " (SIGILL)",
                libc::SIGFPE => " (SIGFPE)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".to_owned(),
    }
}

/// Reads the child's stdout until it closes (or a kill is asked for, or it sends a line over
/// the bound), then reaps the child.
async fn reader(child: Arc<Child>, mut lines: Lines, mut process: tokio::process::Child) {
    let mut too_long = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => child.handle_line(&line),
                Err(LineError::TooLong(max)) => {
                    too_long = Some(max);
                    break;
                }
                Err(LineError::Io(error)) => {
                    tracing::debug!(plugin = %child.plugin, %error, "reading the plugin process failed");
                    break;
                }
                Ok(None) => break,
            },
            _ = child.kill.cancelled() => break,
        }
    }
    let _ = process.start_kill();
    let reason = match process.wait().await {
        Ok(status) => describe(status),
        Err(error) => format!("cannot be waited for: {error}"),
    };
    if let Some(max) = too_long {
        let message = format!(
            "plugin process sent a message longer than {max} bytes (max_message_bytes); it was stopped"
        );
        tracing::warn!(plugin = %child.plugin, "{message}");
        *child.exit.lock() = Some(message.clone());
        child.fail_all(&message);
        return;
    }
    if child.kill.is_cancelled() {
        tracing::debug!(plugin = %child.plugin, %reason, "plugin process stopped");
    } else {
        tracing::warn!(plugin = %child.plugin, %reason, "plugin process crashed");
    }
    *child.exit.lock() = Some(reason.clone());
    child.fail_all(&format!("plugin process crashed ({reason})"));
}

/// Starts a child for `path` and waits for its hello (or refusal).
async fn spawn_child(
    path: &Path,
    options: &PluginOptions,
) -> Result<(Arc<Child>, PluginMetadata), LoadError> {
    let program = options.program();
    let failed = |reason: String| LoadError::Process {
        path: path.to_owned(),
        reason,
    };
    let mut process = Command::new(&program)
        .args(&options.host_args)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(format!("cannot run {}: {error}", program.display())))?;
    let pid = process.id();
    let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
        return Err(failed("no stdio pipes".to_owned()));
    };
    let mut lines = Lines::new(stdout, options.max_message_bytes.max(1024));
    let first = tokio::time::timeout(options.startup_timeout, lines.next_line()).await;
    let metadata = match first {
        Ok(Ok(Some(line))) => match serde_json::from_str::<Response>(&line) {
            Ok(Response::Hello { metadata }) => metadata,
            Ok(Response::Refused { error }) => {
                let error = LoadError::from_wire(path, error);
                if let Some(report) = error.report() {
                    tracing::debug!(path = %path.display(), %report, "plugin refused: full report");
                }
                return Err(error);
            }
            _ => return Err(failed(format!("unexpected first line {line:?}"))),
        },
        Ok(Err(LineError::TooLong(max))) => {
            let _ = process.start_kill();
            return Err(failed(format!(
                "its first message is longer than {max} bytes (max_message_bytes)"
            )));
        }
        Ok(Ok(None)) | Ok(Err(LineError::Io(_))) => {
            let status = process.wait().await.map(describe).unwrap_or_default();
            return Err(failed(format!("exited before answering: {status}")));
        }
        Err(_) => {
            let _ = process.start_kill();
            return Err(failed(format!(
                "no answer within {:?}",
                options.startup_timeout
            )));
        }
    };
    let child = Arc::new(Child {
        plugin: metadata.name.clone(),
        pid,
        stdin: tokio::sync::Mutex::new(stdin),
        pending: parking_lot::Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        kill: CancellationToken::new(),
        exited: CancellationToken::new(),
        exit: parking_lot::Mutex::new(None),
    });
    tokio::spawn(reader(child.clone(), lines, process));
    Ok((child, metadata))
}

/// A plugin running in a child process.
pub(crate) struct ProcessPlugin {
    shared: Arc<Shared>,
}

/// What the plugin's calls and its supervisor share.
struct Shared {
    metadata: PluginMetadata,
    path: PathBuf,
    options: PluginOptions,
    /// The config of the last `initialize`, replayed into a restarted child.
    config: parking_lot::Mutex<Option<Value>>,
    /// The current child; replaced when it has died.
    child: tokio::sync::Mutex<Option<Arc<Child>>>,
    slots: Arc<Semaphore>,
    restarts: AtomicU64,
    /// How the last child that died ended.
    last_exit: parking_lot::Mutex<Option<String>>,
    /// Cleaned up or dropped: no child is started any more.
    closed: CancellationToken,
}

impl ProcessPlugin {
    pub(crate) async fn start(path: &Path, options: &PluginOptions) -> Result<Self, LoadError> {
        let (child, metadata) = spawn_child(path, options).await?;
        let shared = Arc::new(Shared {
            metadata,
            path: path.to_owned(),
            options: options.clone(),
            config: parking_lot::Mutex::new(None),
            child: tokio::sync::Mutex::new(Some(child.clone())),
            slots: Arc::new(Semaphore::new(options.slots())),
            restarts: AtomicU64::new(0),
            last_exit: parking_lot::Mutex::new(None),
            closed: CancellationToken::new(),
        });
        shared.supervise(child, None);
        Ok(ProcessPlugin { shared })
    }

    pub(crate) fn metadata(&self) -> &PluginMetadata {
        &self.shared.metadata
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// How the last child that died ended (`killed by signal 9 (SIGKILL)`, ...).
    pub(crate) fn last_exit(&self) -> Option<String> {
        self.shared.last_exit.lock().clone()
    }

    /// The process id of the live child, if one runs.
    pub(crate) fn child_pid(&self) -> Option<u32> {
        self.shared
            .child
            .try_lock()
            .ok()
            .and_then(|slot| slot.as_ref().filter(|c| c.is_alive()).and_then(|c| c.pid))
    }

    fn plugin_error(&self, message: String) -> orch_core::Error {
        orch_core::Error::Plugin {
            name: self.shared.metadata.name.clone(),
            message,
        }
    }

    pub(crate) async fn initialize(&self, config: Value) -> orch_core::Result<()> {
        let child = self
            .shared
            .connection()
            .await
            .map_err(|error| self.plugin_error(error.message))?;
        child
            .init(&config)
            .await
            .map_err(|error| self.plugin_error(error.message))?;
        *self.shared.config.lock() = Some(config);
        Ok(())
    }

    pub(crate) async fn execute(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let shared = &self.shared;
        let name = shared.metadata.name.as_str();
        let permit = shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TaskError::retryable(format!("plugin {name} is shut down")))?;
        let child = shared
            .connection()
            .await
            .map_err(|error| error.into_task_error(name))?;
        let id = child.next_id();
        let call = CallInfo {
            task_id: ctx.task_id().to_string(),
            engine: ctx.engine().to_owned(),
            attempt: ctx.attempt(),
            max_attempts: ctx.max_attempts(),
        };
        let mut receiver = child
            .request(id, &Request::Execute { id, call, input })
            .await
            .map_err(|error| error.into_task_error(name))?;
        let cancel = ctx.cancellation().clone();
        let early = tokio::select! {
            biased;
            outcome = &mut receiver => Some(outcome),
            _ = cancel.cancelled() => None,
        };
        let result = match early {
            Some(Ok(outcome)) => outcome.into(),
            Some(Err(_)) => Err(CallError::host("plugin process is gone", true)),
            None => {
                // Cancelled or timed out: tell the plugin, and kill the child if the call is
                // still running after the grace period. The watchdog keeps the slot meanwhile.
                let _ = child.write(&Request::Cancel { id }).await;
                tokio::spawn(watchdog(child, id, shared.options.kill_grace, permit));
                receive(receiver).await
            }
        };
        result.map_err(|error| error.into_task_error(name))
    }

    pub(crate) async fn cleanup(&self) -> orch_core::Result<()> {
        self.shared.closed.cancel();
        let child = self.shared.child.lock().await.take();
        *self.shared.config.lock() = None;
        let Some(child) = child.filter(|child| child.is_alive()) else {
            return Ok(());
        };
        let id = child.next_id();
        let result = child.call(Request::Cleanup { id }, id).await;
        child.kill.cancel();
        result
            .map(drop)
            .map_err(|error| self.plugin_error(error.message))
    }
}

impl Shared {
    /// The live child, starting a new one (with the last config) if the previous one died.
    async fn connection(self: &Arc<Self>) -> Result<Arc<Child>, CallError> {
        let mut slot = self.child.lock().await;
        if let Some(child) = slot.as_ref().filter(|child| child.is_alive()) {
            return Ok(child.clone());
        }
        if self.closed.is_cancelled() {
            return Err(CallError::host("plugin is shut down", false));
        }
        let previous = slot.take();
        let (child, _) = spawn_child(&self.path, &self.options)
            .await
            .map_err(|error| CallError::host(error.to_string(), true))?;
        let config = self.config.lock().clone();
        if let Some(config) = config {
            child.init(&config).await?;
        }
        if let Some(previous) = &previous {
            let restarts = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
            let exit = previous.exit.lock().clone().unwrap_or_default();
            *self.last_exit.lock() = Some(exit.clone());
            tracing::warn!(plugin = %self.metadata.name, restarts, %exit, "plugin process restarted");
        }
        *slot = Some(child.clone());
        drop(slot);
        self.supervise(child.clone(), None);
        Ok(child)
    }

    /// Watches `child`: once it has died (and the plugin is still in use), starts the next
    /// one after the restart policy's delay, doubling it while children keep dying.
    fn supervise(self: &Arc<Self>, child: Arc<Child>, delay: Option<Duration>) {
        let Some(policy) = self.options.restart else {
            return;
        };
        let shared = Arc::downgrade(self);
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let born = tokio::time::Instant::now();
            tokio::select! {
                _ = child.exited.cancelled() => {}
                _ = closed.cancelled() => return,
            }
            let delay = match delay {
                Some(previous) if born.elapsed() < policy.reset_after => {
                    previous.saturating_mul(2).min(policy.max)
                }
                _ => policy.initial,
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = closed.cancelled() => return,
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let current = shared.child.lock().await.clone();
            match current {
                // Already replaced (by a call): that child has its own supervisor.
                Some(current) if !Arc::ptr_eq(&current, &child) => {}
                _ => match shared.connection().await {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(plugin = %shared.metadata.name, error = %error.message, ?delay, "restarting the plugin process failed; trying again");
                        shared.supervise(child, Some(delay));
                    }
                },
            }
        });
    }
}

impl Drop for ProcessPlugin {
    fn drop(&mut self) {
        self.shared.closed.cancel();
        if let Ok(mut slot) = self.shared.child.try_lock()
            && let Some(child) = slot.take()
        {
            child.kill.cancel();
        }
    }
}

async fn watchdog(
    child: Arc<Child>,
    id: u64,
    grace: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while child.is_pending(id) && child.is_alive() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                plugin = %child.plugin,
                grace = ?grace,
                "a cancelled call is still running: killing the plugin process"
            );
            child.kill.cancel();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20).min(grace)).await;
    }
}
