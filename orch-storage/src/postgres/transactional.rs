//! Transactional dispatch on PostgreSQL: tasks stored by the application's own transaction, so
//! they exist if and only if the application's data commits.

use orch_core::{Created, Result, TaskSpec};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{PostgresBackend, notify};

impl PostgresBackend {
    /// Stores tasks (each with its `task.queued` event) inside the caller's transaction on the
    /// same database; they exist if and only if that transaction commits, and a rollback
    /// leaves no trace. The transaction may come from the application's own pool (orch's
    /// tables are all prefixed `orch_`, so they live beside the application's) or from
    /// [`begin`](Self::begin).
    ///
    /// Specs are validated as [`Orchestrator::dispatch_many`](orch_core::Orchestrator) does; an
    /// idempotency key already used returns the earlier task with `created: false` (the key's
    /// uniqueness is enforced by the database, so two concurrent transactions using one key
    /// cannot both store a task: the second waits for the first and finds its task if it
    /// committed).
    ///
    /// Specs may depend on each other and on existing tasks, as with `dispatch_many`. An
    /// existing parent that another statement holds at that moment, or a key taken by a
    /// transaction not yet visible, fails the call with a backend error whose cause has
    /// SQLSTATE 40001 (the transaction is then aborted: run it again). A task whose parent had
    /// already failed is stored waiting, marked to end, and ended after the commit by the
    /// orchestrators' rescue pass.
    ///
    /// The statement also sends the wake-up notification, which PostgreSQL delivers only when
    /// the transaction commits: every orchestrator on the database (this process's included)
    /// is woken then, and none by a rollback. sqlx is re-exported as
    /// [`orch_storage::sqlx`](crate::sqlx) so the transaction types match.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use orch_core::TaskSpec;
    /// use orch_storage::PostgresBackend;
    ///
    /// let url = "postgres://app@localhost/app";
    /// let backend = PostgresBackend::connect(url).await?;
    /// let app_pool = sqlx::PgPool::connect(url).await?;
    ///
    /// let mut tx = app_pool.begin().await?;
    /// sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'new')")
    ///     .bind(42_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let spec = TaskSpec::new("ship-order").payload(serde_json::json!({ "order": 42 }));
    /// backend.dispatch_in(&mut tx, vec![spec]).await?;
    /// // The order and its task commit together, or neither does.
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn dispatch_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<Created>> {
        // Not this backend's own sender id: its listener must wake this process too, at commit.
        let payload = notify::payload(Uuid::nil(), true);
        if specs.iter().any(|spec| !spec.depends_on.is_empty()) {
            let tasks = orch_core::backend::plan_tasks(specs, None)?;
            let graph = self.insert_graph(tx, tasks, None, false, payload).await?;
            return Ok(graph.created);
        }
        let tasks = specs
            .into_iter()
            .map(TaskSpec::into_new_task)
            .collect::<Result<Vec<_>>>()?;
        let (created, _) = super::tasks::insert_tasks(tx, tasks, payload).await?;
        Ok(created)
    }

    /// Starts a transaction on this backend's pool, for the application's own statements and
    /// [`dispatch_in`](Self::dispatch_in). Commit or roll it back promptly: it holds a pooled
    /// connection. (Do not start it inside `tokio::time::timeout` or `select!`: sqlx 0.9 may
    /// return a connection whose `begin` was cancelled to the pool still inside a
    /// transaction; this backend's sessions end such a transaction after 60 s idle.)
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(crate::common::db_err("begin"))
    }
}
