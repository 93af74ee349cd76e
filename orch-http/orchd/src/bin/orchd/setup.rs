//! Start-up pieces shared by the subcommands: settings, the data directory, secrets kept with
//! mode 0600, logging, the connection limit against the open-file limit.

use anyhow::{Context, Result, bail};
use orch_http::Secret;
use orchd::settings::{LogFormat, Settings};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::GlobalArgs;

/// Reads the config file (if any) and the environment.
pub(crate) fn settings(global: &GlobalArgs) -> Result<Settings> {
    let lookup = |name: &str| std::env::var(name).ok();
    Settings::load(global.config.as_deref(), &lookup).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Creates the data directory (mode 0700) if needed, or makes an existing one 0700.
pub(crate) fn ensure_data_dir(dir: &Path) -> Result<()> {
    crate::data_dir::ensure(dir)
}

/// The secret in `value` if given, else those kept in `<dir>/<name>` (one a line, the first in
/// force and the others still accepted: how a secret rotates), else a new one written there
/// with mode 0600. Returns the secrets, never empty, and whether one was generated now.
pub(crate) fn secrets(dir: &Path, name: &str, value: Option<&str>) -> Result<(Vec<Secret>, bool)> {
    if let Some(value) = value {
        return Ok((vec![Secret::new(value)], false));
    }
    let path = dir.join(name);
    if path.exists() {
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %path.display(), "secret file was readable by others; mode set to 0600");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let secrets: Vec<Secret> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(Secret::new)
            .collect();
        if secrets.is_empty() {
            bail!("secret file {} is empty", path.display());
        }
        return Ok((secrets, false));
    }
    let secret = Secret::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.expose().as_bytes())?;
    file.write_all(b"\n")?;
    Ok((vec![secret], true))
}

/// File descriptors kept for everything but client connections (database, plugins, files).
const RESERVED_FILES: usize = 256;

/// `options` with `max_connections` lowered to fit this process's open-file limit, unless it
/// was set explicitly (then only a warning).
pub(crate) fn fit_open_files(
    options: orch_http::server::ServerOptions,
    explicit: bool,
) -> orch_http::server::ServerOptions {
    let Some(limit) = open_file_limit() else {
        return options;
    };
    let fits = limit.saturating_sub(RESERVED_FILES).max(16);
    if options.max_connections <= fits {
        return options;
    }
    if explicit {
        tracing::warn!(
            max_connections = options.max_connections,
            open_file_limit = limit,
            "server.max_connections is above what the open-file limit allows"
        );
        return options;
    }
    tracing::info!(
        max_connections = fits,
        open_file_limit = limit,
        "connection limit lowered to fit the open-file limit"
    );
    options.with_max_connections(fits)
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Starts JSON (or text) logs on stderr, filtered by `logging.level` / `ORCH_LOG`.
pub(crate) fn init_logging(settings: &Settings, traces: Option<&orchd::traces::Exporter>) {
    use tracing_subscriber::EnvFilter;
    let level = settings.logging.level.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(traces) = traces else {
        // No span export: the subscriber of old, with nothing in it for traces.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let result = match settings.logging.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(orchd::logging::JsonLines)
                .try_init(),
        };
        if let Err(error) = result {
            eprintln!("orchd: logging already initialised: {error}");
        }
        return;
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Log lines stay as they were: the spans opened for traces are the exporter's alone.
    let logged = filter.and(filter_fn(|metadata| {
        metadata.target() != orch_core::trace::SPAN_TARGET
    }));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match settings.logging.format {
        LogFormat::Text => lines.with_filter(logged).boxed(),
        LogFormat::Json => lines
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(orchd::logging::JsonLines)
            .with_filter(logged)
            .boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(lines)
        .with(traces.layer())
        .try_init();
    if let Err(error) = result {
        eprintln!("orchd: logging already initialised: {error}");
    }
}

/// A random password: 24 hex digits (96 bits).
pub(crate) fn random_password() -> Result<String> {
    orch_http::config::random_hex(12).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where the pid file of a running daemon lives.
pub(crate) fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("orchd.pid")
}
