//! What the SQL statements take from orch-core's task rules.
//!
//! Statements that apply a transition inside the database (a claim, a batch of successes, a
//! new task) do not name states or event kinds themselves: they are written with placeholders
//! (`{claim.from}`, `{claim.to}`, `{claim.event}`, ...) that [`render`] fills in, once, from
//! [`rules`] itself. A rule that changes shape in a way such a statement cannot follow (an
//! event that carries data, a claim that does not start an attempt) stops the backend at the
//! first use of the statement, and the storage tests, instead of drifting from the rule.

use std::time::Duration;

use orch_core::TaskStatus;
use orch_core::backend::AttemptOutcome;
use orch_core::backend::rules::{self, AttemptChange, Change, RunAt};

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The placeholders and their values.
fn values() -> Vec<(&'static str, String)> {
    let claim = rules::claim(Duration::ZERO);
    expect_plain(&claim, "claim", AttemptChange::Begin, RunAt::Keep, true);
    let success = rules::end_attempt(
        1,
        AttemptOutcome::Succeeded {
            result: serde_json::Value::Null,
        },
    );
    expect_plain(&success, "success", AttemptChange::Keep, RunAt::Keep, false);
    let created = rules::created_event();
    assert!(
        created.data.is_null(),
        "the statements store a new task's event without data"
    );
    let terminal: Vec<String> = TaskStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .map(|status| literal(status.as_str()))
        .collect();
    vec![
        ("{created}", literal(rules::CREATED.as_str())),
        ("{created.event}", literal(created.kind.as_str())),
        ("{claim.from}", literal(claim.from.as_str())),
        ("{claim.to}", literal(claim.to.as_str())),
        ("{claim.event}", literal(claim.events[0].kind.as_str())),
        ("{success.from}", literal(success.from.as_str())),
        ("{success.to}", literal(success.to.as_str())),
        ("{success.event}", literal(success.events[0].kind.as_str())),
        ("{queued}", literal(TaskStatus::Queued.as_str())),
        ("{running}", literal(TaskStatus::Running.as_str())),
        ("{terminal}", terminal.join(", ")),
    ]
}

/// Checks that `change` is what a statement written for `name` does: one event without data,
/// the attempt counter and run time changed as given, a lease granted or dropped as given.
fn expect_plain(change: &Change, name: &str, attempt: AttemptChange, run_at: RunAt, lease: bool) {
    assert!(
        change.events.len() == 1 && change.events[0].data.is_null(),
        "the {name} statements append one event without data"
    );
    assert!(
        change.attempt == attempt && change.run_at == run_at && change.lease.is_some() == lease,
        "the {name} statements do not follow orch-core's rule: {change:?}"
    );
    assert!(
        change.error.is_none(),
        "the {name} statements store no error"
    );
}

/// `template` with every placeholder filled in from the rules. Panics on a placeholder it does
/// not know (templates are constants: the storage tests render every one).
pub(crate) fn render(template: &str) -> String {
    let mut sql = template.to_owned();
    for (placeholder, value) in values() {
        sql = sql.replace(placeholder, &value);
    }
    if let Some(start) = sql.find("{claim.").or_else(|| sql.find("{success.")) {
        panic!("unknown rule placeholder in a statement: {}", &sql[start..]);
    }
    sql
}

/// A statement rendered once, on first use.
pub(crate) struct Rendered {
    template: &'static str,
    sql: std::sync::OnceLock<String>,
}

impl Rendered {
    pub(crate) const fn new(template: &'static str) -> Self {
        Rendered {
            template,
            sql: std::sync::OnceLock::new(),
        }
    }

    /// The statement's SQL.
    pub(crate) fn sql(&'static self) -> &'static str {
        self.sql.get_or_init(|| render(self.template))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_rules_names() {
        let sql = render("SET status = {claim.to} WHERE status = {claim.from} AND {terminal}");
        assert_eq!(
            sql,
            "SET status = 'running' WHERE status = 'queued' AND \
             'succeeded', 'failed', 'cancelled', 'timed_out'"
        );
    }
}
