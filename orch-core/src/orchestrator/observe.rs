//! What the monitor sees of an orchestrator, and the actions it may take on it: a small
//! crate-internal surface over [`Inner`] so the monitor never reaches into the dispatcher's
//! fields.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::breaker::Admit;
use super::healing::Healing;
use super::{Inner, MONITOR, control};
use crate::backend::SharedBackend;
use crate::error::Result;
use crate::events::EventLog;
use crate::monitor::StatsSnapshot;

/// One engine as the monitor sees it on this node.
pub(crate) struct EngineView {
    pub(crate) name: Arc<str>,
    pub(crate) limit: usize,
    pub(crate) in_use: usize,
    pub(crate) stats: StatsSnapshot,
    /// It may claim as usual (not paused, not quarantined, node ready).
    pub(crate) claims: bool,
    /// An operator set its limit.
    pub(crate) pinned: bool,
}

impl Inner {
    pub(crate) fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub(crate) fn healing(&self) -> &Healing {
        &self.config.healing
    }

    pub(crate) fn event_log(&self) -> &EventLog {
        &self.events
    }

    /// Lock waits of this node that hit their deadline, since start.
    pub(crate) fn lock_timeouts_so_far(&self) -> u64 {
        self.locks.timeouts_so_far()
    }

    /// Tasks this node rescued since start, per engine.
    pub(crate) fn rescued_so_far(&self) -> BTreeMap<String, u64> {
        self.controls.rescued_so_far()
    }

    /// Every registered plugin's name, version and restarts of its isolated process.
    pub(crate) fn plugin_restarts(&self) -> Vec<(String, String, u64)> {
        use crate::contracts::PluginRegistry;
        self.plugins
            .list()
            .iter()
            .map(|plugin| {
                (
                    plugin.name().to_owned(),
                    plugin.version().to_owned(),
                    plugin.restarts(),
                )
            })
            .collect()
    }

    /// Whether the node is in rotation.
    pub(crate) fn is_ready(&self) -> bool {
        self.controls.is_ready()
    }

    /// Every engine registered here, sorted by name.
    pub(crate) fn engine_views(&self) -> Vec<EngineView> {
        let engines: Vec<_> = self.engines.read().values().cloned().collect();
        let mut views: Vec<EngineView> = engines
            .iter()
            .map(|engine| EngineView {
                name: engine.name.clone(),
                limit: engine.limit.get(),
                in_use: engine.limit.in_use(),
                stats: engine.stats.snapshot(),
                claims: control::admit(self, engine) == Admit::All,
                pinned: engine.pinned.load(Ordering::Acquire),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Sets `engine`'s limit for the scaler (unless an operator pinned it meanwhile).
    pub(crate) async fn scale_engine(
        &self,
        engine: &str,
        limit: usize,
        reason: &str,
    ) -> Result<()> {
        let Some(handle) = self.engines.read().get(engine).cloned() else {
            return Ok(());
        };
        if handle.pinned.load(Ordering::Acquire) {
            return Ok(());
        }
        self.change_concurrency(&handle, limit, MONITOR, reason)
            .await
            .map(drop)
    }
}
