//! The live side of the event log: [`EventLog`] tails the backend's log in sequence order and
//! fans events out to [`Subscription`]s, [`EventHandler`]s and callers waiting for a task.
//!
//! One tail loop per orchestrator reads the store after the last published sequence (woken by
//! the event signal, see the orchestrator's `wake.rs`, and by a poll floor) and publishes
//! into a tokio broadcast channel. A subscriber that falls behind gets `Lagged` from the channel
//! and catches up from the store; one that subscribed from an old sequence replays from the
//! store first. So every subscriber sees every event in order, exactly once, however slow it is,
//! and nobody slows the tail (events pruned from the store before a laggard reads them are the
//! only loss, and show as a jump in `seq`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backend::{ChangeSignal, EventStore};
use crate::contracts::EventHandler;
use crate::error::Result;
use crate::model::{Event, NewEvent, TaskId};

const READ_BATCH: usize = 1024;

/// A caller waiting for a task's terminal event: its number and where to send the news.
type Waiter = (u64, oneshot::Sender<()>);

struct Inner {
    store: Arc<dyn EventStore>,
    sender: broadcast::Sender<Arc<Event>>,
    /// Raised when events were appended: the tail reads the store then.
    signal: ChangeSignal,
    /// The store gives no signal of its own: `signal` is raised by this process's appends.
    local_signal: bool,
    /// Highest sequence the tail has published (or skipped past with nobody listening).
    published: AtomicU64,
    /// Callers waiting for a task to reach a terminal state, each under its own number so it
    /// can leave alone ([`TerminalWait`]'s drop).
    waiters: Mutex<HashMap<TaskId, Vec<Waiter>>>,
    waiter_count: AtomicUsize,
    /// The number of the next waiter.
    next_waiter: AtomicU64,
    /// Fired at shutdown: subscriptions end.
    closed: CancellationToken,
    /// Poked when a listener (subscription, waiter) appears, to wake an idle tail.
    listener_added: Notify,
    /// The tail is idle (nobody listens) and `published` may be stale.
    idle: AtomicBool,
}

/// Live event fan-out over an [`EventStore`]. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log over `store` whose live channel buffers `capacity` events per subscriber before
    /// it lags, woken by `signal` (raised by [`EventLog::append`] too when `local_signal`).
    /// Call [`EventLog::run_tail`] (the orchestrator does) to publish.
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        capacity: usize,
        signal: ChangeSignal,
        local_signal: bool,
    ) -> Self {
        EventLog {
            inner: Arc::new(Inner {
                store,
                sender: broadcast::channel(capacity.max(16)).0,
                signal,
                local_signal,
                published: AtomicU64::new(0),
                waiters: Mutex::new(HashMap::new()),
                waiter_count: AtomicUsize::new(0),
                next_waiter: AtomicU64::new(0),
                closed: CancellationToken::new(),
                listener_added: Notify::new(),
                // Nobody listens yet.
                idle: AtomicBool::new(true),
            }),
        }
    }

    /// The highest sequence published so far.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// Ends every subscription (after a last publish).
    pub(crate) fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Appends an event of the application's own (a security event, an audit entry) to the
    /// log; subscribers see it like any other.
    pub async fn append(&self, event: NewEvent) -> Result<Event> {
        let event = self.inner.store.append_event(event).await?;
        if self.inner.local_signal {
            self.inner.signal.raise();
        }
        Ok(event)
    }

    /// Live events from now on (every event appended after this call returns).
    pub async fn subscribe(&self) -> Result<Subscription> {
        let receiver = self.inner.sender.subscribe();
        let last = self.inner.store.last_event_seq().await?;
        // The tail skipped publishing while nobody listened (or has not started, below an
        // unread backlog: see `start_at_end`): start it from here. Not while a caller waits
        // for a task: its terminal event may lie below `last`, and only the tail delivers it.
        if self.inner.idle.load(Ordering::Acquire)
            && self.inner.waiter_count.load(Ordering::Acquire) == 0
        {
            self.inner.published.fetch_max(last, Ordering::AcqRel);
        }
        self.inner.listener_added.notify_one();
        Ok(Subscription {
            cursor: last,
            receiver,
            pending: VecDeque::new(),
            log: self.inner.clone(),
        })
    }

    /// Every event after `after_seq` (replayed from the store), then live ones.
    pub fn subscribe_from(&self, after_seq: u64) -> Subscription {
        let receiver = self.inner.sender.subscribe();
        self.inner.listener_added.notify_one();
        Subscription {
            cursor: after_seq,
            receiver,
            pending: VecDeque::new(),
            log: self.inner.clone(),
        }
    }

    /// Up to `limit` stored events after `after_seq`, in order.
    pub async fn replay(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.store.read_events(after_seq, limit).await
    }

    /// Up to `limit` stored events of `task_id` after `after_seq`, in order, read through the
    /// store's index by task ([`EventStore::read_task_events`]) rather than by scanning the
    /// log.
    pub async fn task_events(
        &self,
        task_id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner
            .store
            .read_task_events(task_id, after_seq, limit)
            .await
    }

    /// Resolves when a terminal event for `task_id` is published. The caller must check the
    /// task's state after registering (the event may already have passed). Dropping the wait
    /// takes this waiter, and only it, out of the list.
    pub(crate) fn wait_terminal(&self, task_id: TaskId) -> TerminalWait {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .waiters
            .lock()
            .entry(task_id)
            .or_default()
            .push((id, tx));
        self.inner.waiter_count.fetch_add(1, Ordering::AcqRel);
        self.inner.listener_added.notify_one();
        TerminalWait {
            log: self.inner.clone(),
            task_id,
            id,
            fired: rx,
        }
    }

    /// Sets the starting point of the tail to the log's current end, as the store finds it
    /// cheaply ([`EventStore::tail_start_seq`]): no event appended from now on is missed.
    /// Older events numbered after it (a backlog nobody had read) may be published too: the
    /// first subscriber moves the start past them, unless a caller already waits for a task,
    /// and then the tail reads through them once; subscribers skip them (their cursor starts
    /// at the exact end) and a caller waiting for a task rereads the task.
    pub(crate) async fn start_at_end(&self) -> Result<()> {
        let seq = self.inner.store.tail_start_seq().await?;
        self.inner.published.store(seq, Ordering::Release);
        Ok(())
    }

    fn has_listeners(&self) -> bool {
        self.inner.sender.receiver_count() > 0
            || self.inner.waiter_count.load(Ordering::Acquire) > 0
    }

    /// The tail loop: runs until `stop` fires. While nobody listens it sleeps without reading
    /// the store, so an unobserved log costs nothing.
    pub(crate) async fn run_tail(self, poll: Duration, stop: CancellationToken) {
        let inner = &*self.inner;
        loop {
            if !self.has_listeners() {
                inner.idle.store(true, Ordering::Release);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = inner.listener_added.notified() => {}
                }
                continue;
            }
            inner.idle.store(false, Ordering::Release);
            let seen = inner.signal.version();
            if let Err(error) = self.publish_pending().await {
                tracing::warn!(%error, "event tail: reading the log failed; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = inner.signal.changed_since(seen) => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        // One last pass so events of the final transitions reach subscribers.
        if self.has_listeners() {
            let _ = self.publish_pending().await;
        }
    }

    async fn publish_pending(&self) -> Result<()> {
        let inner = &*self.inner;
        loop {
            let cursor = inner.published.load(Ordering::Acquire);
            let batch = inner.store.read_events(cursor, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            let Some(last) = batch.last().map(|e| e.seq) else {
                return Ok(());
            };
            for event in batch {
                if event.kind.is_terminal_task_event()
                    && inner.waiter_count.load(Ordering::Acquire) > 0
                    && let Some(task_id) = event.task_id
                    && let Some(list) = inner.waiters.lock().remove(&task_id)
                {
                    inner.waiter_count.fetch_sub(list.len(), Ordering::AcqRel);
                    for (_, waiter) in list {
                        let _ = waiter.send(());
                    }
                }
                let _ = inner.sender.send(Arc::new(event));
            }
            inner.published.store(last, Ordering::Release);
            if !full {
                return Ok(());
            }
        }
    }

    /// Runs `handler` on every matching event from now on until `stop` fires. A failing
    /// handler is logged; a slow one lags and catches up.
    pub(crate) async fn run_handler(
        mut subscription: Subscription,
        handler: Arc<dyn EventHandler>,
        stop: CancellationToken,
    ) {
        let patterns = handler.supported_events();
        {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    event = subscription.next() => event,
                };
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "event handler: catching up from the log failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    None => break,
                };
                if patterns.iter().any(|p| event.kind.matches(p))
                    && let Err(error) = handler.handle_event(&event).await
                {
                    tracing::warn!(seq = event.seq, kind = %event.kind, %error, "event handler failed");
                }
            }
        }
    }
}

/// One caller's wait for a task's terminal event ([`EventLog::wait_terminal`]): resolves when
/// the event is published; dropped (timed out, or the caller went away), it removes its own
/// entry and no other.
pub(crate) struct TerminalWait {
    log: Arc<Inner>,
    task_id: TaskId,
    id: u64,
    fired: oneshot::Receiver<()>,
}

impl std::future::Future for TerminalWait {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // Sent or dropped, the entry is gone: either way the caller reads the task again.
        std::pin::Pin::new(&mut self.fired).poll(cx).map(|_| ())
    }
}

impl Drop for TerminalWait {
    fn drop(&mut self) {
        let mut waiters = self.log.waiters.lock();
        let Some(list) = waiters.get_mut(&self.task_id) else {
            return;
        };
        if let Some(at) = list.iter().position(|(id, _)| *id == self.id) {
            list.swap_remove(at);
            self.log.waiter_count.fetch_sub(1, Ordering::AcqRel);
        }
        if list.is_empty() {
            waiters.remove(&self.task_id);
        }
    }
}

/// An ordered, gap-free stream of events (see the module docs).
pub struct Subscription {
    /// Sequence of the last event handed out.
    cursor: u64,
    receiver: broadcast::Receiver<Arc<Event>>,
    /// Events read from the store during catch-up, not yet handed out.
    pending: VecDeque<Event>,
    log: Arc<Inner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Sequence of the last event returned (or the starting point).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    async fn catch_up(&mut self) -> Result<bool> {
        let events = self.log.store.read_events(self.cursor, READ_BATCH).await?;
        let any = !events.is_empty();
        self.pending.extend(events);
        Ok(any)
    }

    /// The next event; `None` once the log is closed (the orchestrator shut down). An error
    /// means reading the store during catch-up failed; calling again retries.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.seq <= self.cursor {
                    continue;
                }
                self.cursor = event.seq;
                return Some(Ok(Arc::new(event)));
            }
            if self.cursor < self.log.published.load(Ordering::Acquire) {
                match self.catch_up().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => return Some(Err(error)),
                }
            }
            let received = tokio::select! {
                biased;
                received = self.receiver.recv() => received,
                _ = self.log.closed.cancelled() => return None,
            };
            match received {
                Ok(event) if event.seq <= self.cursor => continue,
                Ok(event) if event.seq == self.cursor + 1 => {
                    self.cursor = event.seq;
                    return Some(Ok(event));
                }
                Ok(event) => {
                    // A gap: fill it from the store, which holds `event` too.
                    match self.catch_up().await {
                        Ok(true) => continue,
                        Ok(false) => {
                            self.cursor = event.seq;
                            return Some(Ok(event));
                        }
                        Err(error) => return Some(Err(error)),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(error) = self.catch_up().await {
                        return Some(Err(error));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::{MemoryBackend, Orchestrator, TaskSpec};

    /// A caller that stops waiting without timing out (an HTTP client that disconnects drops
    /// the request's future) leaves no waiter behind.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_leaves_no_waiter_behind() {
        let orch = Orchestrator::builder(Arc::new(MemoryBackend::new()))
            .build()
            .await
            .unwrap();
        let task = orch.dispatch(TaskSpec::new("nobody")).await.unwrap();
        let other = orch.wait_for(task.id, Duration::from_secs(60));
        let mut other = Box::pin(other);
        // Registered, then dropped before its deadline.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut other)
                .await
                .is_err()
        );
        let dropped = orch.wait_for(task.id, Duration::from_secs(60));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), dropped)
                .await
                .is_err()
        );
        let log = &orch.events().inner;
        assert_eq!(log.waiter_count.load(Ordering::Acquire), 1);
        assert_eq!(log.waiters.lock().get(&task.id).map(Vec::len), Some(1));
        drop(other);
        assert_eq!(log.waiter_count.load(Ordering::Acquire), 0);
        assert!(log.waiters.lock().is_empty());
        orch.shutdown(Duration::from_secs(1)).await;
    }

    /// A subscriber arriving while the tail has not run yet moves its start to the log's end,
    /// but not past the end of a task a caller already waits for: the caller still hears of
    /// it.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_does_not_move_the_tail_past_what_a_caller_waits_for() {
        use crate::backend::EventStore as _;
        use crate::model::{EventKind, NewEvent, TaskId};

        use super::EventLog;

        let store = Arc::new(MemoryBackend::new());
        let log = EventLog::new(store.clone(), 64, crate::backend::ChangeSignal::new(), true);
        log.start_at_end().await.unwrap();
        let task = TaskId::new();
        let waiting = log.wait_terminal(task);
        // The task ends before anyone else listens, and the tail has not run.
        store
            .append_event(NewEvent::for_task(
                EventKind::TaskSucceeded,
                task,
                "engine",
                serde_json::Value::Null,
            ))
            .await
            .unwrap();
        let _subscriber = log.subscribe().await.unwrap();
        assert_eq!(
            log.published(),
            0,
            "the tail's start moved past the task's end"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let tail = tokio::spawn(log.clone().run_tail(Duration::from_secs(1), stop.clone()));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the caller never heard that its task ended");
        // With nobody waiting, a subscriber moves the start of an idle tail to the end.
        stop.cancel();
        tail.await.unwrap();
        let idle = EventLog::new(store.clone(), 64, crate::backend::ChangeSignal::new(), true);
        let _subscriber = idle.subscribe().await.unwrap();
        assert_eq!(idle.published(), store.last_event_seq().await.unwrap());
    }
}
