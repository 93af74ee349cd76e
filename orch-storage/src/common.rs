//! Helpers both backends share: error mapping at the edge, input checks that mirror
//! orch-core's, time conversions and key-range arithmetic.

use std::time::Duration;

use orch_core::Error;

/// The table where the migrator records applied migrations: not sqlx's default, so an
/// application's own sqlx migrations in the same database do not collide with orch's.
pub(crate) const MIGRATIONS_TABLE: &str = "orch_schema_migrations";

/// Most events deleted by one pruning statement (`prune_events` loops until done).
pub(crate) const PRUNE_BATCH: i64 = 5_000;

/// Refuses a database whose schema is newer than this build knows (a newer orch migrated it):
/// running on it could corrupt data the newer schema relies on.
pub(crate) fn check_schema_version(
    operation: &'static str,
    applied: i64,
    latest: i64,
) -> orch_core::Result<()> {
    if applied > latest {
        return Err(Error::backend(
            operation,
            format!(
                "the database schema is at version {applied}, newer than this build of \
                 orch-storage supports ({latest}); upgrade orch-storage"
            ),
        ));
    }
    Ok(())
}

/// Maps a sqlx error into orch-core's backend error, naming the operation.
///
/// Errors that mean the database cannot be reached (the connection broke, the server shut down
/// or is starting, no connection came within the acquire timeout) say so first, so that an
/// operator reading the message knows where to look.
pub(crate) fn db_err(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        let message = match &e {
            sqlx::Error::PoolTimedOut => Some(
                "the database is unreachable: no connection within the acquire timeout (or \
                 every pooled connection stayed busy)"
                    .to_owned(),
            ),
            e if is_unreachable(e) => Some(format!("the database is unreachable: {e}")),
            _ => None,
        };
        match message {
            Some(message) => Error::Unavailable {
                operation,
                message,
                cause: Some(Box::new(e)),
            },
            None => Error::backend_source(operation, e),
        }
    }
}

/// Whether `e` says the database cannot be reached right now (rather than that it refused
/// the statement): a broken or refused connection, a TLS failure, or PostgreSQL's connection
/// exceptions (SQLSTATE class 08) and shutdown or start-up errors (57P01 to 57P03).
pub(crate) fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// A backend error for stored data that does not decode (a corrupt or foreign row).
pub(crate) fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> Error {
    Error::backend(operation, format!("stored data does not decode: {what}"))
}

/// orch-core's name check (non-empty, bounded, no control characters), which it keeps
/// crate-private; the messages are the same.
pub(crate) fn check_name(field: &'static str, value: &str, max: usize) -> orch_core::Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        let count = value.chars().count();
        if count > max {
            return Err(Error::invalid(
                field,
                format!("is {count} characters long, at most {max} allowed"),
            ));
        }
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// The smallest string greater than every string starting with `prefix`, in code point (and so
/// UTF-8 byte) order; `None` when there is none (empty prefix, or only `char::MAX`s).
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(next) = char::from_u32(next) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The priority floor a claim statement compares with (`priority > floor`): `above`, or
/// below every `i32` priority when there is none.
pub(crate) fn priority_floor(above: Option<i32>) -> i64 {
    above.map_or(i64::from(i32::MIN) - 1, i64::from)
}

/// A duration in whole microseconds, saturating (the unit both schemas store).
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A stored microsecond count back into a duration (negative values, which the schema never
/// writes, become zero).
pub(crate) fn from_micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

/// `at` truncated to whole microseconds, the precision both databases keep.
pub(crate) fn truncate_micros(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// A `u32` column stored as a signed integer.
pub(crate) fn to_u32(operation: &'static str, column: &str, value: i64) -> orch_core::Result<u32> {
    u32::try_from(value).map_err(|_| corrupt(operation, format!("{column} = {value}")))
}

/// The migrator of one backend: `(version, description, SQL)` in order, recorded in
/// [`MIGRATIONS_TABLE`].
pub(crate) fn migrator(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let mut migrator = Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// A workflow's tasks (with their steps, in step order) and its dependency rows
/// `(child, parent, on_failure)` (each child's in position order), as `workflow_tasks`
/// returns them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn workflow_tasks_of(
    operation: &'static str,
    tasks: Vec<(usize, orch_core::Task)>,
    edges: Vec<(uuid::Uuid, uuid::Uuid, String)>,
) -> orch_core::Result<Vec<orch_core::WorkflowTask>> {
    use std::str::FromStr as _;

    let mut parents: std::collections::HashMap<uuid::Uuid, Vec<orch_core::backend::NewDependency>> =
        std::collections::HashMap::new();
    for (child, parent, on_failure) in edges {
        parents
            .entry(child)
            .or_default()
            .push(orch_core::backend::NewDependency {
                parent: orch_core::TaskId(parent),
                on_failure: orch_core::OnParentFailure::from_str(&on_failure)
                    .map_err(|e| corrupt(operation, e))?,
            });
    }
    Ok(tasks
        .into_iter()
        .map(|(step, task)| orch_core::WorkflowTask {
            step,
            parents: parents.remove(&task.id.0).unwrap_or_default(),
            task,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bound_covers_exactly_the_prefix() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        let bound = prefix_upper_bound("a\u{D7FF}").unwrap_or_default();
        assert_eq!(bound, "a\u{E000}");
        let max = format!("a{}", char::MAX);
        assert_eq!(prefix_upper_bound(&max).as_deref(), Some("b"));
        for key in ["ab", "ab\u{10FFFF}", "abzzz"] {
            assert!(key.starts_with("ab") && key < "ac");
        }
    }
}
