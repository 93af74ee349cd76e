//! The child process of a process-isolated orch plugin: `orch-plugin-host <plugin file>`.
//! Loads the plugin and serves the host's requests as JSON lines on stdin/stdout. Not meant to
//! be run by hand; `orch-plugins` starts it (see `PluginOptions::host_program`).

fn main() -> std::process::ExitCode {
    orch_plugins::child::run(std::env::args().skip(1))
}
