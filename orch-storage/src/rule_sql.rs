//! What the SQL statements take from orch-core's task rules.
//!
//! Statements that apply a transition inside the database (a claim, a batch of successes, a
//! new task) do not name states or event kinds themselves: they are written with placeholders
//! (`{claim.from}`, `{claim.to}`, `{claim.event}`, ...) that [`render`] fills in, once, from
//! [`rules`] itself. A rule that changes shape in a way such a statement cannot follow (an
//! event that carries data, a claim that does not start an attempt) stops the backend at the
//! first use of the statement, and the storage tests, instead of drifting from the rule.

use std::time::Duration;

use orch_core::backend::AttemptOutcome;
use orch_core::backend::rules::{self, AttemptChange, Change, ParentOutcome, RunAt};
use orch_core::{OnParentFailure, TaskId, TaskStatus, WorkflowId};

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
        created.data.is_null() && rules::waiting_event().data.is_null(),
        "the statements store a new task's event without data"
    );
    let release = rules::release();
    expect_plain(
        &release,
        "release",
        AttemptChange::Keep,
        RunAt::NotBeforeNow,
        false,
    );
    // What a parent's end means for a waiting task: the statements count a success and a
    // run-anyway failure as satisfied, and end the task by the other two policies.
    for policy in [
        OnParentFailure::Fail,
        OnParentFailure::Cancel,
        OnParentFailure::RunAnyway,
    ] {
        assert_eq!(
            rules::parent_outcome(TaskStatus::Succeeded, policy),
            ParentOutcome::Satisfied,
            "the statements count every success as satisfying"
        );
    }
    let ends = |policy| match rules::parent_outcome(TaskStatus::Failed, policy) {
        ParentOutcome::Ends(to) => literal(to.as_str()),
        ParentOutcome::Satisfied => panic!("the statements end a task by {policy}"),
    };
    for status in TaskStatus::ALL.into_iter().filter(|s| s.is_unsuccessful()) {
        assert_eq!(
            rules::parent_outcome(status, OnParentFailure::RunAnyway),
            ParentOutcome::Satisfied,
            "the statements let a run-anyway task run after any failure"
        );
    }
    let ended = |succeeded| {
        let event = rules::workflow_ended(WorkflowId::new(), 2, succeeded)
            .expect("a finished workflow has an event");
        let mut keys: Vec<&String> = event
            .data
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        keys.sort();
        assert!(
            event.task_id.is_none() && keys == ["status", "succeeded", "tasks", "workflow_id"],
            "the statements write a workflow's end event with its status and counts"
        );
        literal(event.kind.as_str())
    };
    let reopened = rules::reopen(TaskId::new(), TaskStatus::Failed, 0).expect("reopens");
    assert!(
        reopened.attempt == AttemptChange::Reset
            && reopened.events.len() == 1
            && reopened.events[0].data == serde_json::json!({"from": "failed"}),
        "the statements reopen a task as the rule does: {reopened:?}"
    );
    let terminal: Vec<String> = TaskStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .map(|status| literal(status.as_str()))
        .collect();
    let unsuccessful: Vec<String> = TaskStatus::ALL
        .into_iter()
        .filter(|status| status.is_unsuccessful())
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
        (
            "{waiting.event}",
            literal(rules::waiting_event().kind.as_str()),
        ),
        ("{release.from}", literal(release.from.as_str())),
        ("{release.to}", literal(release.to.as_str())),
        ("{release.event}", literal(release.events[0].kind.as_str())),
        ("{reopen.event}", literal(reopened.events[0].kind.as_str())),
        ("{ends.fail}", ends(OnParentFailure::Fail)),
        ("{ends.cancel}", ends(OnParentFailure::Cancel)),
        ("{policy.fail}", literal(OnParentFailure::Fail.as_str())),
        (
            "{policy.run_anyway}",
            literal(OnParentFailure::RunAnyway.as_str()),
        ),
        ("{workflow.succeeded}", ended(2)),
        ("{workflow.failed}", ended(1)),
        ("{queued}", literal(TaskStatus::Queued.as_str())),
        ("{running}", literal(TaskStatus::Running.as_str())),
        ("{waiting}", literal(rules::WAITING.as_str())),
        ("{terminal}", terminal.join(", ")),
        ("{unsuccessful}", unsuccessful.join(", ")),
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
    let unknown = [
        "{claim.",
        "{success.",
        "{created",
        "{release.",
        "{reopen.",
        "{waiting",
        "{ends.",
        "{policy.",
        "{workflow.",
        "{unsuccessful",
    ]
    .iter()
    .find_map(|prefix| sql.find(prefix));
    if let Some(start) = unknown {
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
