//! Builds the fixture plugins (examples/echo-engine and orch-plugins/fixtures/*). Used by
//! these tests and, through `#[path]`, by the workspace's plugin bench (`benches/plugins.rs`):
//! nothing here may name the package it is compiled in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages the tests load, built in one `cargo build`.
const FIXTURE_PACKAGES: &[&str] = &[
    "echo-engine",
    "orch-fixture-misbehave",
    "orch-fixture-wrong-protocol",
    "orch-fixture-changed-layout",
    "orch-fixture-not-a-plugin",
];

/// The folder of the workspace's `Cargo.toml`: the nearest one above the package compiled.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.lines().any(|line| line.trim() == "[workspace]"))
        })
        .expect("the package is inside the workspace")
        .to_owned()
}

/// Builds every fixture plugin once (debug or release) into `<target>/plugin-fixtures`, a
/// target directory of its own (the outer `cargo test` holds the lock on the main one) shared
/// by all fixtures, and returns the directory holding the libraries.
pub(crate) fn fixtures_built(release: bool) -> PathBuf {
    static DEBUG: OnceLock<PathBuf> = OnceLock::new();
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    let cell = if release { &RELEASE } else { &DEBUG };
    cell.get_or_init(|| {
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("plugin-fixtures");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .arg("build")
            .arg("--quiet")
            .arg("--target-dir")
            .arg(&target);
        if release {
            command.arg("--release");
        }
        for package in FIXTURE_PACKAGES {
            command.arg("-p").arg(package);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the fixture plugins failed");
        target.join(if release { "release" } else { "debug" })
    })
    .clone()
}

/// The path of the library built from the crate named `lib_name` (underscores).
pub(crate) fn plugin_in(dir: &Path, lib_name: &str) -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    dir.join(format!("{DLL_PREFIX}{lib_name}{DLL_SUFFIX}"))
}
