//! `orchd engines list|pause|resume|concurrency`: the engines of a running daemon over its
//! HTTP API (`GET /engines`, `POST /engines/{name}/pause|resume`,
//! `PUT /engines/{name}/concurrency`), for operators in a terminal.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, Connection, check};

/// `orchd engines ...`.
#[derive(Debug, Args)]
pub(crate) struct EnginesArgs {
    #[command(subcommand)]
    command: EnginesCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Subcommand)]
enum EnginesCommand {
    /// Each engine's state on the daemon: status, concurrency, attempts in flight, pause.
    List,
    /// Pause an engine on every node sharing the database: its queued tasks wait, attempts
    /// running finish.
    Pause(Change),
    /// Resume a paused engine on every node.
    Resume(Change),
    /// Set an engine's concurrency limit on the daemon that answers (one node) while it runs.
    Concurrency {
        /// The engine.
        engine: String,
        /// Attempts at once, at least 1.
        limit: u64,
        /// Why (kept in the event log).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Change {
    /// The engine.
    engine: String,
    /// Why (kept with the pause and in the event log).
    #[arg(long)]
    reason: Option<String>,
}

/// `text` with its control characters escaped, fit for a terminal.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One line per engine, after the node that answered.
fn print_list(body: &Value) {
    println!("node {}", shown(body["node"].as_str().unwrap_or("?")));
    println!(
        "{:<24} {:<15} {:>5} {:>9}  paused by",
        "ENGINE", "STATUS", "LIMIT", "IN FLIGHT"
    );
    for engine in body["engines"].as_array().into_iter().flatten() {
        let pause = &engine["pause"];
        let paused_by = if pause.is_object() {
            format!(
                "{} ({})",
                shown(pause["actor"].as_str().unwrap_or("?")),
                shown(pause["reason"].as_str().unwrap_or(""))
            )
        } else {
            String::new()
        };
        println!(
            "{:<24} {:<15} {:>5} {:>9}  {paused_by}",
            shown(engine["engine"].as_str().unwrap_or("?")),
            engine["status"].as_str().unwrap_or("?"),
            engine["limit"].as_u64().unwrap_or(0),
            engine["in_flight"].as_u64().unwrap_or(0),
        );
    }
}

/// `orchd engines ...`.
pub(crate) async fn run(args: EnginesArgs) -> Result<ExitCode> {
    let client = args.connection.connect().await?;
    let http = &client.http;
    match args.command {
        EnginesCommand::List => {
            let body = check(
                http.get(format!("{}/engines", client.base))
                    .bearer_auth(&client.token)
                    .send()
                    .await?,
                "list",
            )
            .await?;
            print_list(&body);
        }
        EnginesCommand::Pause(change) => {
            let answer = control(&client, "pause", change).await?;
            let engine = answer["engine"]["engine"].as_str().unwrap_or("?");
            if answer["changed"] == true {
                println!("paused {engine} on every node");
            } else {
                println!("{engine} was already paused");
            }
        }
        EnginesCommand::Resume(change) => {
            let answer = control(&client, "resume", change).await?;
            let engine = answer["engine"]["engine"].as_str().unwrap_or("?");
            if answer["changed"] == true {
                println!("resumed {engine} on every node");
            } else {
                println!("{engine} was not paused");
            }
        }
        EnginesCommand::Concurrency {
            engine,
            limit,
            reason,
        } => {
            let mut body = json!({"limit": limit});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let answer = check(
                http.put(client.url(&["engines", &engine, "concurrency"])?)
                    .bearer_auth(&client.token)
                    .json(&body)
                    .send()
                    .await?,
                "concurrency",
            )
            .await?;
            println!(
                "{engine}: concurrency {} (was {}) on node {}",
                answer["engine"]["limit"],
                answer["previous"],
                shown(answer["node"].as_str().unwrap_or("?"))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST /engines/{name}/{action}` with the reason, if any.
async fn control(client: &Client, action: &str, change: Change) -> Result<Value> {
    let mut url = client.url(&["engines", &change.engine, action])?;
    if let Some(reason) = &change.reason {
        url.query_pairs_mut().append_pair("reason", reason);
    }
    check(
        client
            .http
            .post(url)
            .bearer_auth(&client.token)
            .send()
            .await?,
        action,
    )
    .await
}
