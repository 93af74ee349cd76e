//! Opening a plugin file in this process: abi_stable's header, version and layout checks, our
//! protocol version check, and the plugin's info.
//!
//! Each file is loaded through its own header (`lib_header_from_path` then
//! `init_root_module`), never through `RootModule::load_from_file`, which caches one module
//! per interface type and would hand back the first plugin for every later file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, lib_header_from_path};
use orch_plugin_abi::{PROTOCOL_VERSION, PluginModRef};
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// What a plugin says about itself, read from its root module before any engine exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMetadata {
    /// A stable, unique name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// The names of the engines it serves as.
    pub engines: Vec<String>,
    /// Other named capabilities.
    pub capabilities: Vec<String>,
    /// The plugin protocol version it was built for.
    pub protocol_version: u32,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// A plugin library opened in this process and checked.
#[derive(Clone, Copy)]
pub(crate) struct Library {
    pub(crate) module: PluginModRef,
}

/// Opens and checks `path`. The library stays mapped for the life of the process (libraries
/// are never unloaded: code of a timed-out call may still be running).
pub(crate) fn open(path: &Path) -> Result<(Library, PluginMetadata), LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_owned(),
        });
    }
    // abi_stable's checks should not panic, but a bad file must never take the host down.
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        lib_header_from_path(path).and_then(|header| header.init_root_module::<PluginModRef>())
    }));
    let module = match loaded {
        Ok(Ok(module)) => module,
        Ok(Err(error)) => {
            let error = classify(path, error);
            if let Some(report) = error.report() {
                tracing::debug!(path = %path.display(), %report, "plugin refused: full report");
            }
            return Err(error);
        }
        Err(_) => {
            return Err(LoadError::NotAPlugin {
                path: path.to_owned(),
                reason: "the loader panicked while checking it".to_owned(),
                report: String::new(),
            });
        }
    };
    let found = module.protocol_version();
    if found != PROTOCOL_VERSION {
        return Err(LoadError::UnsupportedProtocol {
            path: path.to_owned(),
            found,
            supported: PROTOCOL_VERSION,
        });
    }
    let info = module.info();
    let strings = |slice: abi_stable::std_types::RSlice<'_, abi_stable::std_types::RStr<'_>>| {
        slice.iter().map(|s| s.as_str().to_owned()).collect()
    };
    let metadata = PluginMetadata {
        name: info.name.as_str().to_owned(),
        version: info.version.as_str().to_owned(),
        description: info.description.as_str().to_owned(),
        engines: strings(info.engines),
        capabilities: strings(info.capabilities),
        protocol_version: found,
        path: path.to_owned(),
    };
    check_metadata(&metadata)?;
    Ok((Library { module }, metadata))
}

fn check_metadata(metadata: &PluginMetadata) -> Result<(), LoadError> {
    let invalid = |reason: &str| LoadError::InvalidInfo {
        path: metadata.path.clone(),
        reason: reason.to_owned(),
    };
    if metadata.name.trim().is_empty() {
        return Err(invalid("empty name"));
    }
    if metadata.engines.is_empty() {
        return Err(invalid("serves no engine"));
    }
    if metadata.engines.iter().any(|id| id.trim().is_empty()) {
        return Err(invalid("an empty engine name"));
    }
    Ok(())
}

/// The first line of a message, without the path it may repeat.
fn one_line(text: &str, path: &Path) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    let shown = path.display().to_string();
    line.strip_prefix(&shown)
        .map(|rest| rest.trim_start_matches(':').trim())
        .unwrap_or(line)
        .to_owned()
}

fn classify(path: &Path, error: LibraryError) -> LoadError {
    let report = error.to_string();
    let path_buf = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => {
            let reason = one_line(&err.to_string(), path);
            LoadError::NotAPlugin {
                path: path_buf,
                reason: format!("cannot be loaded as a shared library: {reason}"),
                report,
            }
        }
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin {
            path: path_buf,
            reason: "a shared library without an orch plugin root module".to_owned(),
            report,
        },
        LibraryError::ParseVersionError(_) | LibraryError::IncompatibleVersionNumber { .. } => {
            LoadError::Incompatible {
                path: path_buf,
                reason: one_line(&report, path),
                report,
            }
        }
        LibraryError::AbiInstability(_) => LoadError::Incompatible {
            path: path_buf,
            reason: "the layout of its types differs from this host's".to_owned(),
            report,
        },
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            LoadError::Incompatible {
                path: path_buf,
                reason: "built with an incompatible abi_stable".to_owned(),
                report,
            }
        }
        LibraryError::RootModule { .. } => LoadError::NotAPlugin {
            path: path_buf,
            reason: "its root module failed to initialize".to_owned(),
            report,
        },
        LibraryError::Many(errors) => match errors.into_iter().next() {
            Some(first) => classify(path, first),
            None => LoadError::NotAPlugin {
                path: path_buf,
                reason: "unknown loader error".to_owned(),
                report,
            },
        },
    }
}
