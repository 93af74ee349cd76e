//! Command-line arguments of the benches that parse their own (`harness = false` without
//! criterion): `cargo bench --bench <name> -- <args>` runs the binary with `<args>` and then
//! `--bench`, which is dropped here.

use std::fmt::Display;
use std::str::FromStr;

use anyhow::Context as _;

/// The arguments after the program's name, without the `--bench` cargo appends.
pub(crate) fn bench_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect()
}

/// The positional argument at `index` (arguments starting with `-` do not count), parsed, or
/// `default` when it is missing or does not parse.
pub(crate) fn positional<T: FromStr>(args: &[String], index: usize, default: T) -> T {
    args.iter()
        .filter(|arg| !arg.starts_with('-'))
        .nth(index)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(default)
}

/// `--flag value` arguments, taken one at a time:
///
/// ```ignore
/// let mut flags = Flags::from_env();
/// while let Some(flag) = flags.next_flag() {
///     match flag.as_str() {
///         "--tasks" => tasks = flags.value(&flag)?,
///         other => bail!("unknown argument {other:?}"),
///     }
/// }
/// ```
pub(crate) struct Flags {
    rest: std::vec::IntoIter<String>,
}

impl Flags {
    /// The bench's own arguments ([`bench_args`]).
    pub(crate) fn from_env() -> Self {
        Flags {
            rest: bench_args().into_iter(),
        }
    }

    /// The next argument.
    pub(crate) fn next_flag(&mut self) -> Option<String> {
        self.rest.next()
    }

    /// The value that follows `flag`, parsed.
    pub(crate) fn value<T>(&mut self, flag: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = self
            .rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        value
            .parse()
            .map_err(|e| anyhow::anyhow!("{flag} {value:?}: {e}"))
    }
}
