//! How a plugin is run: in process (the default) or in a child process.

use std::path::PathBuf;
use std::time::Duration;

use orch_core::RestartBackoff;

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// In this process, on the plugin's own threads. Fast (a call costs about 15 µs), but a
    /// plugin that segfaults or aborts takes the host down with it.
    #[default]
    InProcess,
    /// In a child process (`orch-plugin-host`) speaking JSON lines over stdio. A crash, abort
    /// or endless loop kills only the child: the attempt fails and the child is restarted (see
    /// [`PluginOptions::restart`]). Costs a process round trip per call.
    Process,
}

/// Options for loading a plugin. Validated when used (`max_concurrency` of 0 counts as 1).
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// Where the plugin runs.
    pub isolation: Isolation,
    /// Calls of this plugin running at once (in process: also the number of threads it may
    /// start); more wait for a slot (and may time out waiting).
    /// A timed-out in-process call keeps its slot until the plugin returns, so a plugin that
    /// ignores cancellation cannot pile up threads.
    pub max_concurrency: usize,
    /// The child program for [`Isolation::Process`]. Default: `orch-plugin-host` next to the
    /// current executable, or found on `PATH`.
    pub host_program: Option<PathBuf>,
    /// Arguments given to the child program before the plugin's path (for an application that
    /// serves as its own child, see [`child`](crate::child)).
    pub host_args: Vec<String>,
    /// How long a cancelled or timed-out call may keep running in the child before the child
    /// is killed (and restarted on the next call).
    pub kill_grace: Duration,
    /// How long the child may take to load the plugin and say hello.
    pub startup_timeout: Duration,
    /// For [`Isolation::Process`]: a child that dies (a crash, or killed from outside) is
    /// restarted by a supervisor after `initial`, the delay doubling up to `max` while children
    /// keep dying, so the plugin is ready before the next call. `None`: the next call starts
    /// the child. Default: 1 s, up to 60 s.
    pub restart: Option<RestartBackoff>,
    /// The longest message (one JSON line: a reply carrying a result, a log line) the child of
    /// a process-isolated plugin may send. A longer one stops the child: the calls in flight
    /// fail with an error saying so, and a new child is started (by the supervisor or the next
    /// call). Bounds what the host buffers for a child whose output has no end. Default 64 MiB.
    pub max_message_bytes: usize,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            isolation: Isolation::InProcess,
            max_concurrency: std::thread::available_parallelism().map_or(4, |n| n.get()),
            host_program: None,
            host_args: Vec::new(),
            kill_grace: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            restart: Some(RestartBackoff::default()),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl PluginOptions {
    /// Options for a process-isolated plugin.
    pub fn process() -> Self {
        PluginOptions {
            isolation: Isolation::Process,
            ..Self::default()
        }
    }

    /// Sets where the plugin runs.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Sets the per-plugin concurrency limit.
    pub fn with_max_concurrency(mut self, limit: usize) -> Self {
        self.max_concurrency = limit;
        self
    }

    /// Sets the child program for [`Isolation::Process`].
    pub fn with_host_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.host_program = Some(program.into());
        self
    }

    /// Sets the arguments given to the child program before the plugin's path.
    pub fn with_host_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.host_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how long a cancelled call may run on in the child before it is killed.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets how long the child may take to start.
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Sets how a dead child is restarted (`None`: by the next call).
    pub fn with_restart(mut self, restart: Option<RestartBackoff>) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the longest message the child may send.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    pub(crate) fn slots(&self) -> usize {
        self.max_concurrency.max(1)
    }

    pub(crate) fn program(&self) -> PathBuf {
        if let Some(program) = &self.host_program {
            return program.clone();
        }
        let name = format!("orch-plugin-host{}", std::env::consts::EXE_SUFFIX);
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
            .filter(|candidate| candidate.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }
}
