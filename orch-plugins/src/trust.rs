//! Which plugin files and directories the host trusts: code is loaded only from a regular file
//! (not a symbolic link, which could point anywhere) that no other user could have written:
//! not writable by every user, owned by this process's user or by root, in a directory of which
//! the same holds. Each refusal is one line naming the file and why.

use std::fs::Metadata;
use std::path::Path;

use crate::error::LoadError;

/// Checks a plugin file (and the directory holding it) before it is opened.
pub(crate) fn check_file(path: &Path) -> Result<(), LoadError> {
    let refused = |reason: String| LoadError::UntrustedFile {
        path: path.to_owned(),
        reason,
    };
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound {
                path: path.to_owned(),
            });
        }
        Err(error) => return Err(refused(format!("cannot be inspected ({error})"))),
    };
    if metadata.file_type().is_symlink() {
        return Err(refused(
            "a symbolic link (plugins are loaded from regular files only)".to_owned(),
        ));
    }
    if !metadata.is_file() {
        return Err(refused("not a regular file".to_owned()));
    }
    if let Some(reason) = others_could_write(&metadata) {
        return Err(refused(reason));
    }
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_directory(parent)
}

/// Checks a directory plugins are loaded from.
pub(crate) fn check_directory(dir: &Path) -> Result<(), LoadError> {
    let refused = |reason: String| LoadError::UntrustedDirectory {
        path: dir.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(dir).map_err(|source| LoadError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    match others_could_write(&metadata) {
        Some(reason) => Err(refused(reason)),
        None => Ok(()),
    }
}

/// Why another user could have written the file or directory, if one could.
#[cfg(unix)]
fn others_could_write(metadata: &Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Some(format!("writable by every user (mode {mode:04o})"));
    }
    let owner = metadata.uid();
    let me = effective_uid();
    if owner != me && owner != 0 {
        return Some(format!(
            "owned by uid {owner}, neither this process's user (uid {me}) nor root"
        ));
    }
    None
}

#[cfg(not(unix))]
fn others_could_write(_metadata: &Metadata) -> Option<String> {
    None
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code, reason = "no safe std API reads the effective user id")]
    unsafe {
        libc::geteuid()
    }
}
