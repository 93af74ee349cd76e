//! Engine versions: a registered engine can be upgraded to a new processor (or a plugin to a
//! new version) while the current one stays loaded as the previous version. When the new
//! version keeps failing (its circuit breaker opens) and [`Healing::rollback`] is on, its
//! tasks go back to the previous version at once instead of waiting out a quarantine; an
//! operator can also roll back (and forward again) with [`Orchestrator::rollback_engine`].
//!
//! [`Healing::rollback`]: super::Healing::rollback

use std::sync::Arc;

use serde_json::{Value, json};

use super::breaker::Transition;
use super::{Engine, Inner, MONITOR, Orchestrator, control_event};
use crate::contracts::{Plugin, PluginProcessor, PluginRegistry, Processor};
use crate::error::{Error, Result};
use crate::event_kinds;

/// One loaded version of an engine.
#[derive(Clone)]
pub(super) struct Loaded {
    pub(super) processor: Arc<dyn Processor>,
    pub(super) version: Option<String>,
    /// The plugin behind the processor, if it is one: the registry lists the version an
    /// engine runs.
    pub(super) plugin: Option<Arc<dyn Plugin>>,
}

/// The version an engine runs and the one it can go back to.
pub(super) struct Versions {
    pub(super) current: Loaded,
    pub(super) previous: Option<Loaded>,
    /// The current version came from an upgrade: it is the one rolled back if it keeps
    /// failing (never the other way round, so versions cannot flip back and forth).
    pub(super) upgraded: bool,
}

impl Versions {
    pub(super) fn new(processor: Arc<dyn Processor>) -> Self {
        Versions {
            current: Loaded {
                processor,
                version: None,
                plugin: None,
            },
            previous: None,
            upgraded: false,
        }
    }

    /// Swaps the current and previous versions (and lists the plugin now current, if it is
    /// one, in `plugins`); `None` without a previous one. Returns the versions `(from, to)`.
    fn swap(
        &mut self,
        plugins: &crate::registry::DefaultPluginRegistry,
    ) -> Option<(Option<String>, Option<String>)> {
        let previous = self.previous.take()?;
        let from = std::mem::replace(&mut self.current, previous);
        let versions = (from.version.clone(), self.current.version.clone());
        if let Some(plugin) = &self.current.plugin {
            plugins.replace(plugin.clone());
        }
        self.previous = Some(from);
        self.upgraded = false;
        Some(versions)
    }
}

fn label(version: &Option<String>) -> &str {
    version.as_deref().unwrap_or("(unversioned)")
}

/// If `transition` opened the breaker of an engine whose current version came from an
/// upgrade and rollback is on, rolls back and closes the breaker instead; returns the
/// transition to record otherwise.
pub(super) fn roll_back_instead(
    inner: &Inner,
    engine: &Engine,
    transition: Transition,
) -> Option<Transition> {
    let Transition::Quarantined {
        failures,
        last_error,
        ..
    } = &transition
    else {
        return Some(transition);
    };
    if !inner.config.healing.rolls_back() {
        return Some(transition);
    }
    let (from, to) = {
        let mut versions = engine.versions.write();
        if !versions.upgraded {
            return Some(transition);
        }
        versions.swap(&inner.plugins)?
    };
    engine.breaker.close();
    tracing::warn!(engine = %engine.name, from = label(&from), to = label(&to), failures, "new engine version keeps failing; rolled back");
    let reason = format!("version {} failed {failures} calls in a row", label(&from));
    let event = control_event(
        event_kinds::ENGINE_ROLLED_BACK,
        Some(&engine.name),
        MONITOR,
        &reason,
        &inner.config.node_id,
        fields(
            json!({"from_version": from, "to_version": to, "failures": failures, "last_error": last_error}),
        ),
    );
    inner.controls.changed.raise();
    let events = inner.events.clone();
    inner.background.spawn(async move {
        if let Err(error) = events.append(event).await {
            tracing::warn!(%error, "recording a rollback failed");
        }
    });
    None
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

impl Orchestrator {
    /// Runs `processor` as `engine`'s new version `version` on this node from the next
    /// attempt on (running attempts finish on the version they started with). The version
    /// running until now stays loaded as the previous one: if the new one keeps failing (its
    /// circuit breaker opens) and [`Healing::rollback`](crate::Healing::rollback) is on, the
    /// engine goes back to it by itself; [`Orchestrator::rollback_engine`] does it on demand.
    /// The breaker counts the new version's failures afresh.
    pub async fn upgrade_engine(
        &self,
        engine: &str,
        processor: impl Processor + 'static,
        version: &str,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        let new = Loaded {
            processor: Arc::new(processor),
            version: Some(version.to_owned()),
            plugin: None,
        };
        self.install(engine, new, actor, reason).await
    }

    async fn install(&self, engine: &str, new: Loaded, actor: &str, reason: &str) -> Result<()> {
        let version = new.version.clone().unwrap_or_default();
        let version = version.as_str();
        crate::model::check_name("version", version, 128)?;
        super::control::check_actor(actor, reason)?;
        let handle = self.engine_named(engine)?;
        let from = {
            let mut versions = handle.versions.write();
            let from = versions.current.version.clone();
            versions.previous = Some(std::mem::replace(&mut versions.current, new));
            versions.upgraded = true;
            from
        };
        handle.breaker.close();
        self.inner.controls.changed.raise();
        tracing::info!(
            engine,
            from = label(&from),
            to = version,
            actor,
            reason,
            "engine upgraded"
        );
        self.inner
            .record_control(
                event_kinds::ENGINE_UPGRADED,
                Some(engine),
                actor,
                reason,
                json!({"from_version": from, "to_version": version}),
            )
            .await
    }

    /// Swaps `engine`'s current and previous versions on this node (a rollback, or a roll
    /// forward after one). Returns `false` if it has no previous version.
    pub async fn rollback_engine(&self, engine: &str, actor: &str, reason: &str) -> Result<bool> {
        super::control::check_actor(actor, reason)?;
        let handle = self.engine_named(engine)?;
        let Some((from, to)) = handle.versions.write().swap(&self.inner.plugins) else {
            return Ok(false);
        };
        handle.breaker.close();
        self.inner.controls.changed.raise();
        tracing::info!(
            engine,
            from = label(&from),
            to = label(&to),
            actor,
            reason,
            "engine rolled back"
        );
        self.inner
            .record_control(
                event_kinds::ENGINE_ROLLED_BACK,
                Some(engine),
                actor,
                reason,
                json!({"from_version": from, "to_version": to}),
            )
            .await?;
        Ok(true)
    }

    /// Upgrades a registered plugin: initializes `plugin` (a new version of one registered
    /// under the same name) with `config` and makes it the current version of each of its
    /// engines registered here ([`Orchestrator::upgrade_engine`]), the version it replaces
    /// staying loaded as the previous one (its `cleanup` is not called: it may be rolled back
    /// to). The registry lists the new version.
    pub async fn upgrade_plugin(
        &self,
        plugin: Arc<dyn Plugin>,
        config: Value,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        let name = plugin.name().to_owned();
        super::control::check_actor(actor, reason)?;
        self.inner.plugins.get(&name)?;
        let engines: Vec<String> = plugin
            .capabilities()
            .iter()
            .filter_map(|c| c.engine_name().map(str::to_owned))
            .filter(|engine| self.inner.engines.read().contains_key(engine))
            .collect();
        if engines.is_empty() {
            return Err(Error::invalid(
                "plugin",
                format!("{name:?} serves none of the engines registered here"),
            ));
        }
        plugin.initialize(config).await?;
        self.inner.plugins.replace(plugin.clone());
        for engine in engines {
            let new = Loaded {
                processor: Arc::new(PluginProcessor(plugin.clone())),
                version: Some(plugin.version().to_owned()),
                plugin: Some(plugin.clone()),
            };
            self.install(&engine, new, actor, reason).await?;
        }
        Ok(())
    }
}
