//! [`DefaultPluginRegistry`]: the [`PluginRegistry`] the orchestrator uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde_json::Value;

use crate::contracts::{Plugin, PluginRegistry};
use crate::error::{Error, Result};
use crate::model::check_name;

/// A thread-safe plugin registry.
#[derive(Default)]
pub struct DefaultPluginRegistry {
    plugins: RwLock<BTreeMap<String, Arc<dyn Plugin>>>,
}

impl DefaultPluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `plugin` under its name in place of the version registered there (an upgrade:
    /// neither version's lifecycle is touched).
    pub(crate) fn replace(&self, plugin: Arc<dyn Plugin>) {
        self.plugins
            .write()
            .insert(plugin.name().to_owned(), plugin);
    }
}

#[async_trait]
impl PluginRegistry for DefaultPluginRegistry {
    async fn register(&self, plugin: Arc<dyn Plugin>, config: Value) -> Result<()> {
        let name = plugin.name().to_owned();
        check_name("plugin name", &name, 128)?;
        if self.plugins.read().contains_key(&name) {
            return Err(Error::PluginExists(name));
        }
        plugin.initialize(config).await?;
        let inserted = {
            let mut plugins = self.plugins.write();
            if plugins.contains_key(&name) {
                false
            } else {
                plugins.insert(name.clone(), plugin.clone());
                true
            }
        };
        if !inserted {
            // Lost a race with another registration of the same name: undo our initialize.
            plugin.cleanup().await?;
            return Err(Error::PluginExists(name));
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Arc<dyn Plugin>> {
        self.plugins
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::PluginNotFound(name.to_owned()))
    }

    fn list(&self) -> Vec<Arc<dyn Plugin>> {
        self.plugins.read().values().cloned().collect()
    }

    async fn unregister(&self, name: &str) -> Result<Arc<dyn Plugin>> {
        let plugin = self
            .plugins
            .write()
            .remove(name)
            .ok_or_else(|| Error::PluginNotFound(name.to_owned()))?;
        plugin.cleanup().await?;
        Ok(plugin)
    }
}
