//! Planning a dispatch whose tasks depend on each other: steps resolved to ids, the graph
//! checked (no cycle, no unknown step, no task waiting for itself or twice for one parent),
//! and ids given parents first, so that every task's id is greater than its parents' ids.
//! Backends rely on that order: they lock task rows in id order, parents before children.

use std::collections::{HashMap, HashSet};

use super::ids;
use super::workflow::{NewDependency, Parent, WorkflowId};
use super::{NewTask, TaskId, TaskSpec};
use crate::error::{Error, Result};

/// How an error names a task of the dispatch: its step and engine.
fn name(specs: &[TaskSpec], index: usize) -> String {
    if specs.len() == 1 {
        format!("the task (engine {:?})", specs[0].engine)
    } else {
        format!("step {index} (engine {:?})", specs[index].engine)
    }
}

/// Validates `specs` (a dispatch, in order) and turns them into the tasks a backend stores,
/// in the same order, each with its dependencies resolved to ids and `workflow_id` set.
///
/// Refused with [`Error::Invalid`] naming the task (by step and engine), before anything is
/// stored: a dependency on a step the dispatch does not have or on the task itself, the same
/// parent named twice, a cycle, and two tasks with the same idempotency key in a dispatch with
/// dependencies or of a workflow. A dependency on an existing task is checked by the backend, which refuses an
/// unknown one the same way.
///
/// Ids are given in a topological order of the graph (parents first, ties by step), and
/// above every existing task named as a parent.
pub fn plan_tasks(specs: Vec<TaskSpec>, workflow_id: Option<WorkflowId>) -> Result<Vec<NewTask>> {
    let n = specs.len();
    // Within-dispatch edges (child, parent step) and the largest existing parent.
    let mut steps_of: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut floor: Option<TaskId> = None;
    let mut any_dependency = false;
    for (index, spec) in specs.iter().enumerate() {
        let mut seen = HashSet::with_capacity(spec.depends_on.len());
        for dependency in &spec.depends_on {
            any_dependency = true;
            if !seen.insert(dependency.parent) {
                return Err(Error::invalid(
                    "depends_on",
                    format!(
                        "{} names {} twice",
                        name(&specs, index),
                        describe(dependency.parent)
                    ),
                ));
            }
            match dependency.parent {
                Parent::Task(id) => floor = floor.max(Some(id)),
                Parent::Step(step) if step.0 >= n => {
                    return Err(Error::invalid(
                        "depends_on",
                        format!(
                            "{} depends on {step}, but the dispatch has {n} task{}",
                            name(&specs, index),
                            if n == 1 { "" } else { "s" }
                        ),
                    ));
                }
                Parent::Step(step) if step.0 == index => {
                    return Err(Error::invalid(
                        "depends_on",
                        format!("{} depends on itself", name(&specs, index)),
                    ));
                }
                Parent::Step(step) => {
                    steps_of[index].push(step.0);
                    children[step.0].push(index);
                }
            }
        }
    }
    let order = topological_order(&specs, &steps_of, &children)?;
    if any_dependency || workflow_id.is_some() {
        let mut keys = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            if let Some(key) = &spec.idempotency_key
                && let Some(first) = keys.insert(key.as_str(), index)
            {
                return Err(Error::invalid(
                    "idempotency_key",
                    format!(
                        "{} and {} share the key {key:?}: keys of one graph must differ",
                        name(&specs, first),
                        name(&specs, index)
                    ),
                ));
            }
        }
    }
    // Validated, ids given in topological order.
    let mut planned: Vec<Option<NewTask>> = Vec::with_capacity(n);
    let mut depends_on = Vec::with_capacity(n);
    for spec in specs {
        depends_on.push(spec.depends_on.clone());
        planned.push(Some(spec.into_new_task_alone()?));
    }
    // Above the largest existing parent even when it was made by a process whose clock runs
    // ahead: this graph's ids continue from it. (Only this graph's: a parent that turns out
    // not to exist must not move the ids this process makes later.)
    let mut last = floor.map(|floor| floor.0);
    let mut ids = vec![TaskId(uuid::Uuid::nil()); n];
    for &index in &order {
        let mut id = TaskId::new();
        if let Some(below) = last {
            if id.0 <= below {
                id = ids::v7_after(below).map_or(id, TaskId);
            }
            last = Some(id.0);
        }
        ids[index] = id;
    }
    let mut out = Vec::with_capacity(n);
    for (index, (task, depends_on)) in planned.into_iter().zip(depends_on).enumerate() {
        let mut task = task.ok_or_else(|| Error::invalid("depends_on", "planned twice"))?;
        task.id = ids[index];
        task.workflow_id = workflow_id;
        task.dependencies = depends_on
            .into_iter()
            .map(|dependency| NewDependency {
                parent: match dependency.parent {
                    Parent::Task(id) => id,
                    Parent::Step(step) => ids[step.0],
                },
                on_failure: dependency.on_failure,
            })
            .collect();
        out.push(task);
    }
    Ok(out)
}

fn describe(parent: Parent) -> String {
    match parent {
        Parent::Task(id) => format!("task {id}"),
        Parent::Step(step) => step.to_string(),
    }
}

/// Kahn's algorithm, ties by step: the steps parents first, or the error naming a cycle.
fn topological_order(
    specs: &[TaskSpec],
    steps_of: &[Vec<usize>],
    children: &[Vec<usize>],
) -> Result<Vec<usize>> {
    let n = specs.len();
    let mut pending: Vec<usize> = steps_of.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&index| pending[index] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(index) = ready.pop_first() {
        order.push(index);
        for &child in &children[index] {
            pending[child] -= 1;
            if pending[child] == 0 {
                ready.insert(child);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every step left waits for another step left: walk back from one until a step repeats.
    let start = (0..n).find(|&index| pending[index] > 0).unwrap_or_default();
    let mut path = vec![start];
    let mut at = start;
    while let Some(&parent) = steps_of[at].iter().find(|&&p| pending[p] > 0) {
        if let Some(repeat) = path.iter().position(|&p| p == parent) {
            path.drain(..repeat);
            path.push(parent);
            break;
        }
        path.push(parent);
        at = parent;
    }
    // Walking back went child to parent: show the cycle parent first.
    path.reverse();
    let shown: Vec<String> = path.iter().map(|p| p.to_string()).collect();
    Err(Error::invalid(
        "depends_on",
        format!(
            "{} is part of a cycle of steps {}",
            name(specs, path[0]),
            shown.join(" -> ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workflow::{OnParentFailure, Step};

    fn invalid(specs: Vec<TaskSpec>) -> String {
        match plan_tasks(specs, None) {
            Err(Error::Invalid { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parents_get_smaller_ids_and_steps_resolve() {
        // The merge comes first in the dispatch but waits for the two after it.
        let specs = vec![
            TaskSpec::new("merge").after(Step(1)).after(Step(2)),
            TaskSpec::new("left").after(Step(3)),
            TaskSpec::new("right").after_with(Step(3), OnParentFailure::RunAnyway),
            TaskSpec::new("fetch"),
        ];
        let workflow = WorkflowId::new();
        let tasks = plan_tasks(specs, Some(workflow)).unwrap();
        assert_eq!(tasks[0].engine, "merge");
        for task in &tasks {
            assert_eq!(task.workflow_id, Some(workflow));
            for dependency in &task.dependencies {
                assert!(dependency.parent < task.id, "{task:?}");
            }
        }
        assert_eq!(tasks[0].dependencies[0].parent, tasks[1].id);
        assert_eq!(
            tasks[2].dependencies[0],
            NewDependency {
                parent: tasks[3].id,
                on_failure: OnParentFailure::RunAnyway
            }
        );
    }

    #[test]
    fn an_existing_parent_ahead_of_this_clock_still_gets_a_smaller_id() {
        let ahead = TaskId(uuid::Uuid::from_u128(
            (u128::from(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 30_000)
                << 80)
                | (0x7 << 76)
                | (0b10 << 62),
        ));
        let tasks = plan_tasks(
            vec![
                TaskSpec::new("later").after(ahead),
                TaskSpec::new("after that").after(Step(0)),
            ],
            None,
        )
        .unwrap();
        assert!(tasks[0].id > ahead);
        assert!(tasks[1].id > tasks[0].id);
        // The parent may not exist (the dispatch is then refused): ids made here afterwards
        // keep to this clock rather than to an id anyone may name.
        assert!(TaskId::new() < ahead);
    }

    #[test]
    fn bad_graphs_are_refused_naming_the_task() {
        let cycle = invalid(vec![
            TaskSpec::new("a").after(Step(2)),
            TaskSpec::new("b").after(Step(0)),
            TaskSpec::new("c").after(Step(1)),
        ]);
        assert!(cycle.contains("cycle of steps"), "{cycle}");
        assert!(cycle.contains("engine"), "{cycle}");
        let unknown = invalid(vec![TaskSpec::new("a"), TaskSpec::new("b").after(Step(5))]);
        assert!(
            unknown.contains("step 1 (engine \"b\") depends on step 5"),
            "{unknown}"
        );
        let own = invalid(vec![TaskSpec::new("a").after(Step(0))]);
        assert!(own.contains("depends on itself"), "{own}");
        let twice = invalid(vec![
            TaskSpec::new("a"),
            TaskSpec::new("b").after(Step(0)).after(Step(0)),
        ]);
        assert!(twice.contains("names step 0 twice"), "{twice}");
        let keys = invalid(vec![
            TaskSpec::new("a").idempotency_key("k"),
            TaskSpec::new("b").idempotency_key("k").after(Step(0)),
        ]);
        assert!(keys.contains("share the key"), "{keys}");
    }
}
