//! `orchd user ...`: users managed on the host, straight in the database (the daemons may be
//! running; they see a change at once for logins and within `security.user_recheck` for
//! tokens). What an admin does over the API, without needing an admin token: the way back in
//! when `admin` is locked out, disabled or its password lost.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use orch_http::auth::users::{UserChange, UserStore};
use orch_http::{Role, Secret};

use crate::GlobalArgs;
use crate::db::Db;

/// `orchd user <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user (prints a generated password unless --password or ORCH_NEW_PASSWORD is set).
    Add(UserAddArgs),
    /// List the users, with their role and whether they are disabled or locked.
    List,
    /// Set a user's password (prints a generated one unless --password or ORCH_NEW_PASSWORD is
    /// set); also clears failed logins and lockout. The user's tokens stop working.
    Passwd(PasswdArgs),
    /// Give a user another role; its tokens stop working.
    Role(RoleArgs),
    /// Disable a user: it cannot log in and its tokens stop working.
    Disable(NameArgs),
    /// Enable a disabled user.
    Enable(NameArgs),
    /// Clear a user's failed logins and lockout.
    Unlock(NameArgs),
    /// Delete a user; its tokens stop working.
    Delete(NameArgs),
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

/// A user's name.
#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Login name.
    username: String,
}

/// Arguments of `orchd user passwd`.
#[derive(Debug, Args)]
pub(crate) struct PasswdArgs {
    /// Login name.
    username: String,
    /// The new password (at least 12 bytes); generated and printed when absent.
    #[arg(long, env = "ORCH_NEW_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// Arguments of `orchd user role`.
#[derive(Debug, Args)]
pub(crate) struct RoleArgs {
    /// Login name.
    username: String,
    /// admin, operator, viewer or system.
    #[arg(value_parser = parse_role)]
    role: Role,
}

/// `--role`: one of the API's roles, or an error naming them.
fn parse_role(value: &str) -> Result<Role, String> {
    value.parse().map_err(|e: orch_http::ApiError| e.message)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The database and a user store over it, hashing as the daemon does.
async fn open(global: &GlobalArgs) -> Result<(Db, UserStore)> {
    let settings = crate::setup::settings(global)?;
    let db = crate::db::open(global, &settings).await?;
    let hashing = settings
        .http_config(Secret::new("x".repeat(32)), Vec::new(), &global.data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .password_hashing;
    let users = UserStore::new(db.backend(), hashing)?;
    Ok((db, users))
}

/// `orchd user ...`.
pub(crate) async fn run(global: GlobalArgs, command: UserCommand) -> Result<ExitCode> {
    let (db, users) = open(&global).await?;
    let result = apply(&users, command).await;
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn apply(users: &UserStore, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add(args) => {
            let (password, generated) = password_or_generated(args.password)?;
            users
                .create(&args.username, &password, args.role, now_unix())
                .await?;
            println!(
                "user {:?} added with role {}",
                args.username,
                args.role.as_str()
            );
            if generated {
                println!("password (shown once): {password}");
            }
        }
        UserCommand::List => {
            let now = now_unix();
            println!("{:<24} {:<9} state", "username", "role");
            for user in users.list().await? {
                let login = users.login_state(&user.username).await?;
                let state = match (user.disabled, login.locked_until) {
                    (true, _) => "disabled".to_owned(),
                    (false, Some(until)) if until > now => {
                        format!("locked for {} s", until - now)
                    }
                    _ => "active".to_owned(),
                };
                println!("{:<24} {:<9} {state}", user.username, user.role.as_str());
            }
        }
        UserCommand::Passwd(args) => {
            let (password, generated) = password_or_generated(args.password)?;
            users
                .update(&args.username, UserChange::default().password(&password))
                .await?;
            println!(
                "password of {:?} changed; its tokens no longer work",
                args.username
            );
            if generated {
                println!("password (shown once): {password}");
            }
        }
        UserCommand::Role(args) => {
            users
                .update(&args.username, UserChange::default().role(args.role))
                .await?;
            println!(
                "user {:?} now has role {}; its tokens no longer work",
                args.username,
                args.role.as_str()
            );
        }
        UserCommand::Disable(args) => {
            users
                .update(&args.username, UserChange::default().disabled(true))
                .await?;
            println!(
                "user {:?} disabled; its tokens no longer work",
                args.username
            );
        }
        UserCommand::Enable(args) => {
            users
                .update(&args.username, UserChange::default().disabled(false))
                .await?;
            println!("user {:?} enabled", args.username);
        }
        UserCommand::Unlock(args) => {
            users.unlock(&args.username).await?;
            println!("user {:?} unlocked", args.username);
        }
        UserCommand::Delete(args) => {
            users.delete(&args.username).await?;
            println!(
                "user {:?} deleted; its tokens no longer work",
                args.username
            );
        }
    }
    Ok(())
}

fn password_or_generated(given: Option<String>) -> Result<(String, bool)> {
    match given {
        Some(password) if password.is_empty() => bail!("the password is empty"),
        Some(password) => Ok((password, false)),
        None => Ok((crate::setup::random_password()?, true)),
    }
}
