//! Start-up pieces shared by the subcommands: settings, the data directory, secrets kept with
//! mode 0600, logging, and `orchd user add`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use orch_http::{Role, Secret};
use orchd::settings::{LogFormat, Settings};

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

/// The secret in `value` if given, else the one kept in `<dir>/<name>`, else a new one written
/// there with mode 0600. Returns the secret and whether it was generated now.
pub(crate) fn secret(dir: &Path, name: &str, value: Option<&str>) -> Result<(Secret, bool)> {
    if let Some(value) = value {
        return Ok((Secret::new(value), false));
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
        let text = text.trim();
        if text.is_empty() {
            bail!("secret file {} is empty", path.display());
        }
        return Ok((Secret::new(text), false));
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
    Ok((secret, true))
}

/// Starts JSON (or text) logs on stderr, filtered by `logging.level` / `ORCH_LOG`.
pub(crate) fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let level = settings.logging.level.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.logging.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("orchd: logging already initialised: {error}");
    }
}

/// Arguments of `orchd user add`.
#[derive(Debug, Args)]
pub(crate) struct UserAddArgs {
    /// Login name.
    #[arg(long)]
    username: String,
    /// admin, operator, viewer or system.
    #[arg(long, default_value = "operator", value_parser = parse_role)]
    role: Role,
    /// Password (at least 12 bytes); generated and printed when absent.
    #[arg(long, env = "ORCH_NEW_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// `--role`: one of the API's roles, or an error naming them.
fn parse_role(value: &str) -> Result<Role, String> {
    value.parse().map_err(|e: orch_http::ApiError| e.message)
}

/// A random password: 24 hex digits (96 bits).
pub(crate) fn random_password() -> Result<String> {
    orch_http::config::random_hex(12).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `orchd user add`: writes the user straight into the database (the daemon may be running).
pub(crate) async fn user_add(global: GlobalArgs, args: UserAddArgs) -> Result<ExitCode> {
    let settings = settings(&global)?;
    let role = args.role;
    let db = crate::db::open(&global, &settings).await?;
    let hashing = settings
        .http_config(Secret::new("x".repeat(32)), Vec::new(), &global.data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .password_hashing;
    let users = orch_http::auth::users::UserStore::new(db.backend(), hashing)?;
    let (password, generated) = match args.password {
        Some(password) => (password, false),
        None => (random_password()?, true),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    users.create(&args.username, &password, role, now).await?;
    println!("user {:?} added with role {}", args.username, role.as_str());
    if generated {
        println!("password (shown once): {password}");
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Where the pid file of a running daemon lives.
pub(crate) fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("orchd.pid")
}
