//! orch-plugins' integration tests, one binary. The fixture plugins (examples/echo-engine and
//! orch-plugins/fixtures/*) are built once per run by [`fixtures::fixtures_built`], into one
//! shared target directory.

mod fixtures;
mod in_process;
#[cfg(unix)]
mod process;
mod refusals;
mod support;
#[cfg(unix)]
mod untrusted;
