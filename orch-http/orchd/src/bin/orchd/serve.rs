//! `orchd serve`: ORCH-Next's start-up sequence (config, database, background services,
//! security and users, HTTP server) and its shutdown sequence (stop accepting, drain in-flight
//! requests and tasks for up to `server.shutdown_grace`, stop background services, close the
//! database).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use orch_core::{Orchestrator, OrchestratorConfig, Plugin};
use orch_http::{AppState, Secret};
use orch_plugins::PluginOptions;
use orchd::settings::PluginSettings;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::{GlobalArgs, ServeArgs};

/// A line of the start-up banner on standard output. A closed or broken stdout (the reader
/// went away: `orchd | head -1`, a supervisor that closed the pipe) must not stop the daemon,
/// as `println!` would by panicking: the line is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

// === Plugins (orch-plugins) ==============================================================
// Every plugin file in `dir` is loaded, checked, initialised with `plugins.config.<name>` and
// registered: its engine capabilities then serve their core_ids. A bad file is refused with a
// one-line warning and does not stop the daemon.
async fn load_plugins(orch: &Orchestrator, dir: &Path, settings: &PluginSettings) -> usize {
    if !dir.is_dir() {
        tracing::debug!(dir = %dir.display(), "no plugin directory");
        return 0;
    }
    let options = PluginOptions {
        isolation: settings.isolation.into(),
        ..PluginOptions::default()
    };
    let found = match orch_plugins::load_plugin_dir(dir, &options).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!("{error}");
            return 0;
        }
    };
    let mut registered = 0;
    for plugin in found.plugins {
        let name = plugin.name().to_owned();
        let config = settings.config.get(&name).cloned().unwrap_or(Value::Null);
        match orch.register_plugin(Arc::new(plugin), config).await {
            Ok(()) => {
                tracing::info!(plugin = %name, "plugin registered");
                registered += 1;
            }
            Err(error) => tracing::warn!(plugin = %name, %error, "plugin refused"),
        }
    }
    registered
}
// ==========================================================================================

/// SIGINT and SIGTERM, listened for from the moment this is made: a signal that arrives
/// while orchd is still starting (after it said where it listens, say) ends it cleanly
/// through the shutdown sequence instead of killing it.
struct ShutdownSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                None
            }
        };
        ShutdownSignals {
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Resolves at the first SIGINT or SIGTERM.
    async fn received(mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.interrupt) => tracing::info!("SIGINT received"),
            _ = next(&mut self.terminate) => tracing::info!("SIGTERM received"),
        }
    }
}

/// `orchd serve`.
pub(crate) async fn run(global: GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    // 1. Configuration from the file and the environment.
    let settings = crate::setup::settings(&global)?;
    // Traces: started before logging, whose subscriber carries the exporter's layer.
    let trace_export = settings
        .trace_export()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let traces = match &trace_export {
        Some(export) => Some(Arc::new(
            orchd::traces::Exporter::start(export).map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
        None => None,
    };
    crate::setup::init_logging(&settings, traces.as_deref());
    let data_dir = global.data_dir.clone();
    // Held until this process exits: one daemon per data directory, and no restore under it.
    let _data_dir_lock = crate::data_dir::lock_for_serve(&data_dir)?;
    let listen = args
        .listen
        .or_else(|| settings.server.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen.parse().map_err(|e| {
        anyhow::anyhow!("invalid config server.listen / ORCH_LISTEN {listen:?}: {e}")
    })?;
    // The JWT keys: given, or kept in the data directory (one a line: the first signs, the
    // others are previous keys still accepted).
    let (mut jwt_keys, jwt_generated) = crate::setup::secrets(
        &data_dir,
        "jwt_secret",
        settings.security.jwt_secret.as_deref(),
    )?;
    let jwt_secret = jwt_keys.remove(0);
    let mut webhook_secrets: Vec<Secret> = settings
        .webhook_secrets()
        .into_iter()
        .map(Secret::new)
        .collect();
    let mut webhook_generated = false;
    if webhook_secrets.is_empty() {
        // One secret a line, every one accepted (the first is the one to hand out): a
        // secret rotates by adding the new one and dropping the old once senders moved.
        let (secrets, generated) = crate::setup::secrets(&data_dir, "webhook_secret", None)?;
        webhook_secrets = secrets;
        webhook_generated = generated;
    }
    let mut config = settings
        .http_config(jwt_secret, webhook_secrets, &data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let monitor = settings
        .monitor_config()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let healing = settings.healing().map_err(|e| anyhow::anyhow!("{e}"))?;
    let notifiers = settings
        .notifiers(&config.webhook_secrets)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.jwt.previous_secrets.extend(jwt_keys);
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let server_options = crate::setup::fit_open_files(
        settings
            .server_options()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        settings.server.max_connections.is_some(),
    );
    let tls = match settings.tls_files().map_err(|e| anyhow::anyhow!("{e}"))? {
        Some((cert, key)) => Some(
            orchd::tls::TlsHandshake::from_pem_files(&cert, &key)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };

    // 2. Database (migrations are applied on open).
    let db = crate::db::open(&global, &settings).await?;
    tracing::info!(database = %db.describe(), "database open");

    // 3. Orchestrator, engines, plugins, background services.
    let monitoring = monitor.is_some();
    let mut builder = Orchestrator::builder(db.backend()).config(
        OrchestratorConfig::default()
            .with_monitor(monitor)
            .with_healing(healing),
    );
    if monitoring {
        builder = builder
            .sampler(orchd::machine::MachineSampler::new(&data_dir))
            .sampler(config.auth_failures.clone());
        if let Some(sampler) = db.sampler() {
            builder = builder.sampler(sampler);
        }
        for notifier in &notifiers {
            builder = builder.notifier(notifier.clone());
        }
    }
    if traces.is_some() {
        builder = builder.trace_propagator(orchd::traces::OtelPropagator);
    }
    let orch = builder
        .build()
        .await
        .context("cannot start the orchestrator")?;
    let builtin = !args.no_builtin_engines && settings.engines.builtin.unwrap_or(true);
    if builtin {
        orch.register_engine("echo", orchd::engines::Echo)?;
        orch.register_engine("sleep", orchd::engines::Sleep)?;
    }
    let plugin_dir = settings
        .plugins
        .directory
        .clone()
        .unwrap_or_else(|| data_dir.join("plugins"));
    let plugins = load_plugins(&orch, &plugin_dir, &settings.plugins).await;
    let background = CancellationToken::new();
    let mut backup_task = None;
    if let Db::Sqlite(sqlite, Some(_)) = &db
        && settings.backup.enabled.unwrap_or(true)
    {
        let interval =
            Duration::from_secs(settings.backup.interval_hours.unwrap_or(24).max(1) * 3600);
        backup_task = Some(tokio::spawn(crate::backup::scheduled(
            sqlite.clone(),
            crate::backup::backup_dir(&global, &settings),
            interval,
            settings.backup.retention.unwrap_or(7),
            background.clone(),
        )));
    }

    // 4. Security and users.
    let state = AppState::new(orch.clone(), config).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Ready only while the database's schema is the one this process migrated it to (a newer
    // orchd may have migrated it further since).
    let schema = db
        .schema_version()
        .await
        .context("cannot read the schema version")?;
    {
        let db = db.clone();
        state.set_ready_check(move || {
            let db = db.clone();
            async move {
                match db.schema_version().await {
                    Ok(version) if version == schema => Ok(()),
                    Ok(version) => Err(format!(
                        "the database schema moved from version {schema} to {version} since this \
                         process started: restart it with a build that runs version {version}"
                    )),
                    Err(error) => Err(format!("cannot read the schema version: {error}")),
                }
            }
        });
    }
    // The first user, once across every process starting on this database at once.
    let mut admin_password_generated = None;
    if state
        .users()
        .is_empty()
        .await
        .context("cannot read the users")?
    {
        let (password, generated) = match std::env::var("ORCH_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
        {
            Some(password) => (password, false),
            None => (crate::setup::random_password()?, true),
        };
        let now = state.clock().unix_now();
        let created = state
            .users()
            .create_first("admin", &password, orch_http::Role::Admin, now)
            .await
            .context("cannot create the admin user")?;
        if created.is_some() {
            tracing::info!("created user admin");
            if generated {
                admin_password_generated = Some(password);
            }
        }
    }

    // 5. HTTP server.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    std::fs::write(
        crate::setup::pid_file(&data_dir),
        std::process::id().to_string(),
    )?;
    let app = orch_http::router(state.clone());
    let stop_accepting = CancellationToken::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = {
        let stop = stop_accepting.clone();
        match tls {
            Some(tls) => tokio::spawn(orch_http::server::serve_with(
                listener,
                app,
                stop,
                server_options,
                tls,
            )),
            None => tokio::spawn(orch_http::server::serve_with(
                listener,
                app,
                stop,
                server_options,
                orch_http::server::PlainTcp,
            )),
        }
    };

    // 6. Tell the person how to use it (a signal from here on ends orchd cleanly).
    let signals = ShutdownSignals::listen();
    say!(
        "orchd {} listening on {scheme}://{local}",
        env!("CARGO_PKG_VERSION")
    );
    say!("  database:  {}", db.describe());
    say!("  engines:   {}", orch.engines().join(", "));
    match orch.monitor() {
        Some(monitor) => say!(
            "  monitor:   every {} s, self-healing {}",
            monitor.config().interval.as_secs(),
            if orch.config().healing.enabled {
                "on"
            } else {
                "off"
            }
        ),
        None => say!("  monitor:   off"),
    }
    match &trace_export {
        Some(export) => say!(
            "  traces:    to {} as {} (sampling {})",
            export.shown_url(),
            export.service_name,
            export.sample_ratio
        ),
        None => say!("  traces:    off"),
    }
    if !notifiers.is_empty() {
        let names: Vec<&str> = notifiers.iter().map(|n| n.name()).collect();
        say!("  alerts to: {}", names.join(", "));
    }
    if jwt_generated || webhook_generated {
        say!(
            "  secrets:   generated and kept in {} (mode 0600)",
            data_dir.display()
        );
    }
    say!(
        "  plugins:   {plugins} loaded from {}",
        plugin_dir.display()
    );
    match &admin_password_generated {
        Some(password) => {
            say!("  admin password (shown once, keep it): {password}");
        }
        None => say!("  log in with an existing user"),
    }
    say!("log in:");
    say!(
        "  curl -s -X POST {scheme}://{local}/auth/login -H 'Content-Type: application/json' \\\n       -d '{{\"username\":\"admin\",\"password\":\"<password>\"}}'"
    );
    say!(
        "then send Authorization: Bearer <access_token>; API description at {scheme}://{local}/openapi.json"
    );
    tracing::info!(%local, "listening");

    // 7. Run until SIGTERM/SIGINT, then the shutdown sequence.
    signals.received().await;
    let grace = Duration::from_secs(settings.server.shutdown_grace.unwrap_or(30));
    state.begin_shutdown();
    stop_accepting.cancel();
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("in-flight requests completed"),
        Ok(Ok(Err(error))) => tracing::error!(%error, "server error"),
        Ok(Err(error)) => tracing::error!(%error, "server task failed"),
        Err(_) => tracing::warn!("in-flight requests still running after the grace period"),
    }
    let report = orch.shutdown(grace).await;
    tracing::info!(
        drained = report.drained,
        abandoned = report.abandoned,
        "tasks stopped"
    );
    background.cancel();
    if let Some(task) = backup_task {
        let _ = task.await;
    }
    db.close().await;
    if let Some(traces) = traces {
        // The spans of the attempts drained above, sent before the process ends.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    let _ = std::fs::remove_file(crate::setup::pid_file(&data_dir));
    tracing::info!("orchd stopped");
    Ok(ExitCode::SUCCESS)
}
