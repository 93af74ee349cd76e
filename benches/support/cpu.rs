//! User + system CPU time from `/proc/<pid>/stat`: figures that a shared, noisy machine moves
//! less than wall time. Zero where `/proc` is unavailable.

use std::time::Duration;

/// Milliseconds per clock tick in `/proc/<pid>/stat` (`USER_HZ` is 100 on Linux).
const MILLIS_PER_TICK: u64 = 10;

/// The process name and its user + system ticks, from the text of a `stat` file.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    // The name is in brackets and may itself hold spaces and brackets: split at the last `)`.
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 11 and 12 after the name.
    let ticks = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Some((name, ticks))
}

/// User + system CPU time of this process so far.
pub(crate) fn process_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat).map(|(_, ticks)| ticks))
        .map_or(Duration::ZERO, |ticks| {
            Duration::from_millis(ticks * MILLIS_PER_TICK)
        })
}

/// User + system CPU time of every process named `name` alive now (for example a database
/// server's backends: those that exited are not counted).
pub(crate) fn cpu_time_of(name: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| {
            parse_stat(&stat).and_then(|(process, ticks)| (process == name).then_some(ticks))
        })
        .sum();
    Duration::from_millis(ticks * MILLIS_PER_TICK)
}
