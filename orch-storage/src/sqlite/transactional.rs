//! Transactional dispatch on SQLite: tasks stored by the application's own write transaction,
//! so they exist if and only if the application's data commits.

use orch_core::{Created, Result, TaskSpec};
use sqlx::{Sqlite, Transaction};

use super::SqliteBackend;
use crate::common::db_err;

impl SqliteBackend {
    /// Starts a write transaction (`BEGIN IMMEDIATE`) on this backend's writer connection, for
    /// the application's own statements and [`dispatch_in`](Self::dispatch_in).
    ///
    /// The backend has one writer, so while the transaction is open every other write of this
    /// backend (the orchestrator's claims and reports included) waits for it: keep it short,
    /// and do not call the orchestrator from inside it (its writes would wait for this
    /// transaction, and this transaction for them). Dropping it without committing rolls back.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.begin("begin_write").await
    }

    /// Stores tasks (each with its `task.queued` event) inside the caller's transaction, which
    /// may be one from [`begin_write`](Self::begin_write) or one the application opened on its
    /// own connection to the same database file (begin it with `BEGIN IMMEDIATE`, as
    /// `pool.begin_with("BEGIN IMMEDIATE")` does, or SQLite may refuse the upgrade to a write
    /// with "database is locked"). The tasks exist if and only if the transaction commits; a
    /// rollback leaves no trace.
    ///
    /// Specs are validated as [`Orchestrator::dispatch_many`](orch_core::Orchestrator) does; an
    /// idempotency key already used returns the earlier task with `created: false`.
    ///
    /// Commit with [`commit_and_wake`](Self::commit_and_wake) so this process's orchestrator
    /// starts the tasks at once. After a plain `tx.commit()`, tasks committed on the
    /// application's own connection are noticed within milliseconds (the backend watches for
    /// other connections' commits); those committed on a transaction from `begin_write` only
    /// at the orchestrator's next poll. sqlx is re-exported as [`orch_storage::sqlx`](crate::sqlx)
    /// so the transaction types match.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use orch_core::TaskSpec;
    /// use orch_storage::SqliteBackend;
    ///
    /// let backend = SqliteBackend::open("data/orch.db").await?;
    /// let mut tx = backend.begin_write().await?;
    /// sqlx::query("INSERT INTO orders (id, state) VALUES (?, 'new')")
    ///     .bind(42_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let spec = TaskSpec::new("ship-order").payload(serde_json::json!({ "order": 42 }));
    /// backend.dispatch_in(&mut tx, vec![spec]).await?;
    /// // The order and its task commit together, or neither does.
    /// backend.commit_and_wake(tx).await?;
    /// # Ok(()) }
    /// ```
    pub async fn dispatch_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<Created>> {
        let tasks = if specs.iter().any(|spec| !spec.depends_on.is_empty()) {
            orch_core::backend::plan_tasks(specs, None)?
        } else {
            specs
                .into_iter()
                .map(TaskSpec::into_new_task)
                .collect::<Result<Vec<_>>>()?
        };
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        super::tasks::insert_tasks(tx, tasks).await
    }

    /// Commits `tx` and then tells this process's orchestrator and event subscribers to look
    /// for new tasks and events (see [`dispatch_in`](Self::dispatch_in)).
    pub async fn commit_and_wake(&self, tx: Transaction<'_, Sqlite>) -> Result<()> {
        tx.commit().await.map_err(db_err("commit"))?;
        self.wake_tasks();
        self.wake_events();
        Ok(())
    }
}
