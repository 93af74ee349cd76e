//! Why a plugin file was refused. Each error prints as one line naming the file and the cause;
//! the long report (abi_stable's layout diff, the loader's own message) is kept apart in
//! [`LoadError::report`] and logged at debug level.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A plugin file that could not be loaded. The host is unaffected: nothing of the file stays
/// in use.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at this path.
    #[error("plugin {}: file not found", path.display())]
    NotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file is not an orch plugin: not a shared library, or a shared library without an
    /// orch root module.
    #[error("plugin {}: not an orch plugin ({reason})", path.display())]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// One line on why.
        reason: String,
        /// The loader's full message.
        report: String,
    },
    /// The plugin was built against an incompatible version of the interface (a different
    /// `orch-plugin-abi` or `abi_stable`): its types' layout differs from the host's.
    #[error(
        "plugin {}: built against an incompatible plugin interface ({reason}); rebuild it against this host's orch-plugin-abi (full report at debug level)",
        path.display()
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// One line on what differs.
        reason: String,
        /// abi_stable's full report.
        report: String,
    },
    /// The plugin speaks a protocol version this host does not support.
    #[error(
        "plugin {}: plugin protocol version {found} is not supported (this host supports {supported})",
        path.display()
    )]
    UnsupportedProtocol {
        /// The file.
        path: PathBuf,
        /// The plugin's protocol version.
        found: u32,
        /// The host's.
        supported: u32,
    },
    /// The plugin's info is unusable (empty name, no capabilities, ...).
    #[error("plugin {}: invalid plugin info ({reason})", path.display())]
    InvalidInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The child process of a process-isolated plugin could not be started or did not answer.
    #[error("plugin {}: plugin process failed to start ({reason})", path.display())]
    Process {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file could have been written by another user, or is a symbolic link: refused
    /// before anything of it is loaded.
    #[error("plugin {}: refused: {reason}", path.display())]
    UntrustedFile {
        /// The file.
        path: PathBuf,
        /// Why (`writable by every user (mode 0666)`, `a symbolic link ...`, ...).
        reason: String,
    },
    /// The directory plugins were to be loaded from could have been written by another user:
    /// nothing in it is loaded.
    #[error("plugin directory {}: refused: {reason}", path.display())]
    UntrustedDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A plugin directory could not be read.
    #[error("plugin directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::NotFound { path }
            | LoadError::NotAPlugin { path, .. }
            | LoadError::Incompatible { path, .. }
            | LoadError::UnsupportedProtocol { path, .. }
            | LoadError::InvalidInfo { path, .. }
            | LoadError::Process { path, .. }
            | LoadError::UntrustedFile { path, .. }
            | LoadError::UntrustedDirectory { path, .. }
            | LoadError::Directory { path, .. } => path,
        }
    }

    /// The long report behind the one-line message (abi_stable's layout diff, the dynamic
    /// loader's message), when there is one.
    pub fn report(&self) -> Option<&str> {
        match self {
            LoadError::NotAPlugin { report, .. } | LoadError::Incompatible { report, .. } => {
                Some(report)
            }
            _ => None,
        }
    }

    pub(crate) fn to_wire(&self) -> WireLoadError {
        let (kind, reason, report, found) = match self {
            LoadError::NotFound { .. } => ("not_found", String::new(), String::new(), 0),
            LoadError::NotAPlugin { reason, report, .. } => {
                ("not_a_plugin", reason.clone(), report.clone(), 0)
            }
            LoadError::Incompatible { reason, report, .. } => {
                ("incompatible", reason.clone(), report.clone(), 0)
            }
            LoadError::UnsupportedProtocol { found, .. } => {
                ("protocol", String::new(), String::new(), *found)
            }
            LoadError::InvalidInfo { reason, .. } => {
                ("invalid_info", reason.clone(), String::new(), 0)
            }
            other => ("process", other.to_string(), String::new(), 0),
        };
        WireLoadError {
            kind: kind.to_owned(),
            reason,
            report,
            found,
        }
    }

    pub(crate) fn from_wire(path: &Path, wire: WireLoadError) -> Self {
        let path = path.to_owned();
        match wire.kind.as_str() {
            "not_found" => LoadError::NotFound { path },
            "not_a_plugin" => LoadError::NotAPlugin {
                path,
                reason: wire.reason,
                report: wire.report,
            },
            "incompatible" => LoadError::Incompatible {
                path,
                reason: wire.reason,
                report: wire.report,
            },
            "protocol" => LoadError::UnsupportedProtocol {
                path,
                found: wire.found,
                supported: orch_plugin_abi::PROTOCOL_VERSION,
            },
            "invalid_info" => LoadError::InvalidInfo {
                path,
                reason: wire.reason,
            },
            _ => LoadError::Process {
                path,
                reason: wire.reason,
            },
        }
    }
}

/// A [`LoadError`] as the child process reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireLoadError {
    kind: String,
    reason: String,
    report: String,
    found: u32,
}
