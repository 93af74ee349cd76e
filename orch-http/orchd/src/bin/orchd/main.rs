//! `orchd`: the orch daemon and its command line.
//!
//! `orchd` (or `orchd serve`) starts a secure orchestrator on an embedded SQLite file under
//! `data/`, or on PostgreSQL (`DATABASE_URL=postgres://...`), over HTTP or HTTPS
//! (`server.tls`); the other subcommands dispatch a task to a running daemon, list, retry and
//! cancel its tasks, show, pause and resume its engines, manage users, back up, restore and
//! migrate the database.

/// mimalloc: the dispatcher allocates on one thread and frees on another, a pattern under which
/// glibc malloc fragments and costs about a third of the throughput (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod client;
mod data_dir;
mod db;
mod engines_cli;
mod jobs_cli;
mod serve;
mod setup;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The orch daemon.
#[derive(Debug, Parser)]
#[command(name = "orchd", version, about = "The orch task orchestrator daemon")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options every subcommand understands.
#[derive(Debug, Clone, Args)]
struct GlobalArgs {
    /// Data directory: database, secrets, backups, plugins.
    #[arg(long, global = true, env = "ORCH_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// YAML config file (ORCH-Next's config/production.yaml layout).
    #[arg(long, global = true, env = "ORCH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve(ServeArgs),
    /// Dispatch a task to a running daemon (ORCH-Next's Task-Dispatcher.ps1 -Action Dispatch).
    Dispatch(client::DispatchArgs),
    /// List, show, retry and cancel a running daemon's tasks.
    Jobs(jobs_cli::JobsArgs),
    /// Show, pause and resume a running daemon's engines, or set their concurrency.
    Engines(engines_cli::EnginesArgs),
    /// Manage users in the database (the way back in when admin is locked out).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Write a consistent copy of the database to data/backups/ (or --output).
    Backup(backup::BackupArgs),
    /// Replace the database with a backup (the daemon must be stopped).
    Restore(backup::RestoreArgs),
    /// Apply pending database migrations and print the schema version.
    Migrate,
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ORCH_LISTEN")]
    listen: Option<String>,
    /// Do not register the built-in `echo` and `sleep` engines.
    #[arg(long)]
    no_builtin_engines: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("orchd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => serve::run(cli.global, ServeArgs::default()).await,
            Some(Command::Serve(args)) => serve::run(cli.global, args).await,
            Some(Command::Dispatch(args)) => client::dispatch(args).await,
            Some(Command::Jobs(args)) => jobs_cli::run(args).await,
            Some(Command::Engines(args)) => engines_cli::run(args).await,
            Some(Command::User(command)) => user::run(cli.global, command).await,
            Some(Command::Backup(args)) => backup::backup(cli.global, args).await,
            Some(Command::Restore(args)) => backup::restore(cli.global, args).await,
            Some(Command::Migrate) => db::migrate(cli.global).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("orchd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
