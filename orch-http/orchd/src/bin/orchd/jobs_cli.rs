//! `orchd jobs list|show|retry|cancel`: the tasks of a running daemon over its HTTP API
//! (`GET /jobs`, `GET /jobs/{id}` and its events, `POST /jobs/{id}/retry|cancel`), for
//! operators in a terminal.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{Client, Connection, check};

/// `orchd jobs ...`.
#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Tasks, oldest first, one line each.
    List {
        /// Only this state (`queued`, `running`, `failed`, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only this core (engine or worker pool).
        #[arg(long = "core-id")]
        core_id: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A task as JSON, then its events in order.
    Show {
        /// The task id.
        id: String,
    },
    /// Retry a task that failed, was cancelled or timed out: queued again, attempts anew.
    Retry {
        /// The task id.
        id: String,
    },
    /// Cancel a waiting, queued or running task.
    Cancel {
        /// The task id.
        id: String,
    },
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or("-")
}

/// `orchd jobs ...`.
pub(crate) async fn run(args: JobsArgs) -> Result<ExitCode> {
    let client = args.connection.connect().await?;
    let http = &client.http;
    match args.command {
        JobsCommand::List {
            status,
            core_id,
            limit,
        } => {
            let mut url = client.url(&["jobs"])?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                if let Some(status) = &status {
                    query.append_pair("status", status);
                }
                if let Some(core_id) = &core_id {
                    query.append_pair("core_id", core_id);
                }
            }
            let page = check(
                http.get(url).bearer_auth(&client.token).send().await?,
                "list",
            )
            .await?;
            println!(
                "{:<36} {:<10} {:<20} {:>7}  created",
                "TASK", "STATUS", "CORE", "ATTEMPT"
            );
            for task in page["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<36} {:<10} {:<20} {:>7}  {}",
                    text(task, "task_id"),
                    text(task, "status"),
                    text(task, "core_id"),
                    task["attempt"].as_u64().unwrap_or(0),
                    text(task, "created_at"),
                );
            }
            if let Some(next) = page["next_after"].as_str() {
                eprintln!("more after {next}");
            }
        }
        JobsCommand::Show { id } => {
            let task = check(
                http.get(client.url(&["jobs", &id])?)
                    .bearer_auth(&client.token)
                    .send()
                    .await?,
                "show",
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&task)?);
            let events = check(
                http.get(client.url(&["jobs", &id, "events"])?)
                    .bearer_auth(&client.token)
                    .send()
                    .await?,
                "events",
            )
            .await?;
            println!("events:");
            for event in events["events"].as_array().into_iter().flatten() {
                let data = &event["data"];
                println!(
                    "  {:>8}  {}  {:<16} {}",
                    event["seq"].as_u64().unwrap_or(0),
                    text(event, "at"),
                    text(event, "kind"),
                    if data.is_null() {
                        String::new()
                    } else {
                        data.to_string()
                    }
                );
            }
        }
        JobsCommand::Retry { id } => {
            let task = action(&client, &id, "retry").await?;
            println!(
                "task {} is {} again",
                text(&task, "task_id"),
                text(&task, "status")
            );
        }
        JobsCommand::Cancel { id } => {
            let task = action(&client, &id, "cancel").await?;
            println!(
                "task {} is {}",
                text(&task, "task_id"),
                text(&task, "status")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST /jobs/{id}/{action}`.
async fn action(client: &Client, id: &str, action: &str) -> Result<Value> {
    check(
        client
            .http
            .post(client.url(&["jobs", id, action])?)
            .bearer_auth(&client.token)
            .send()
            .await?,
        action,
    )
    .await
}
