//! The in-memory key-value space.

use async_trait::async_trait;

use super::MemoryBackend;
use crate::contracts::{StorageProvider, check_storage_key};
use crate::error::Result;

#[async_trait]
impl StorageProvider for MemoryBackend {
    async fn store(&self, key: &str, value: Vec<u8>) -> Result<()> {
        check_storage_key(key)?;
        self.kv.write().insert(key.to_owned(), value);
        Ok(())
    }

    async fn retrieve(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_storage_key(key)?;
        Ok(self.kv.read().get(key).cloned())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check_storage_key(key)?;
        Ok(self.kv.write().remove(key).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .kv
            .read()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect())
    }
}
