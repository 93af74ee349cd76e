//! [`MachineSampler`]: the monitor's readings of the machine orchd runs on (CPU, memory, the
//! disk holding the data directory, network I/O), from the `sysinfo` crate.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use orch_core::monitor::{Metric, Sampler};
//! use orchd::machine::MachineSampler;
//!
//! let sampler = MachineSampler::new(std::env::temp_dir());
//! let readings = sampler.sample().await.unwrap();
//! let memory = readings.iter().find(|r| r.metric == Metric::MemoryPercent).unwrap();
//! assert!((0.0..=100.0).contains(&memory.value));
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use orch_core::monitor::{Metric, Reading, Sampler};
use parking_lot::Mutex;
use sysinfo::{Disks, Networks, System};

/// What one sample keeps for the next: the probes (sysinfo computes CPU use and network
/// rates from the difference between two refreshes) and when the last one ran.
struct Probes {
    system: System,
    networks: Networks,
    disks: Disks,
    /// The index in `disks` of the disk holding the data directory (`None`: not found).
    data_disk: Option<usize>,
    /// When the network counters were last refreshed.
    last: Instant,
}

/// Samples the machine for the monitor: `cpu_percent` (all cores, since the last sample),
/// `memory_percent`, `disk_percent` (of the file system holding the data directory) and
/// network bytes per second received and sent (all interfaces but loopback). Refreshes run on
/// tokio's blocking pool and read only those figures (no process list).
pub struct MachineSampler {
    data_dir: PathBuf,
    probes: Arc<Mutex<Probes>>,
}

impl std::fmt::Debug for MachineSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineSampler")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The disk whose mount point is the longest prefix of `path`.
fn disk_of(disks: &Disks, path: &Path) -> Option<usize> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    disks
        .list()
        .iter()
        .enumerate()
        .filter(|(_, disk)| path.starts_with(disk.mount_point()))
        .max_by_key(|(_, disk)| disk.mount_point().as_os_str().len())
        .map(|(index, _)| index)
}

impl MachineSampler {
    /// A sampler reporting the disk that holds `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let mut system = System::new();
        system.refresh_cpu_usage();
        let disks = Disks::new_with_refreshed_list();
        let data_disk = disk_of(&disks, &data_dir);
        MachineSampler {
            probes: Arc::new(Mutex::new(Probes {
                system,
                networks: Networks::new_with_refreshed_list(),
                disks,
                data_disk,
                last: Instant::now(),
            })),
            data_dir,
        }
    }

    fn read(probes: &mut Probes) -> Vec<Reading> {
        let mut readings = Vec::with_capacity(5);
        probes.system.refresh_cpu_usage();
        readings.push(Reading::new(
            Metric::CpuPercent,
            f64::from(probes.system.global_cpu_usage()).clamp(0.0, 100.0),
        ));
        probes.system.refresh_memory();
        let total = probes.system.total_memory();
        if total > 0 {
            readings.push(Reading::new(
                Metric::MemoryPercent,
                probes.system.used_memory() as f64 * 100.0 / total as f64,
            ));
        }
        if let Some(disk) = probes
            .data_disk
            .and_then(|index| probes.disks.list_mut().get_mut(index))
            && disk.refresh()
            && disk.total_space() > 0
        {
            let used = disk.total_space().saturating_sub(disk.available_space());
            readings.push(Reading::new(
                Metric::DiskPercent,
                used as f64 * 100.0 / disk.total_space() as f64,
            ));
        }
        probes.networks.refresh(true);
        let now = Instant::now();
        let seconds = now.duration_since(probes.last).as_secs_f64();
        probes.last = now;
        if seconds > 0.0 {
            let (received, sent) = probes
                .networks
                .list()
                .iter()
                .filter(|(name, _)| name.as_str() != "lo")
                .fold((0u64, 0u64), |(r, s), (_, data)| {
                    (r + data.received(), s + data.transmitted())
                });
            readings.push(Reading::new(
                Metric::NetworkReceived,
                received as f64 / seconds,
            ));
            readings.push(Reading::new(Metric::NetworkSent, sent as f64 / seconds));
        }
        readings
    }
}

#[async_trait]
impl Sampler for MachineSampler {
    async fn sample(&self) -> orch_core::Result<Vec<Reading>> {
        let probes = self.probes.clone();
        tokio::task::spawn_blocking(move || Self::read(&mut probes.lock()))
            .await
            .map_err(|error| orch_core::Error::backend_source("sample the machine", error))
    }
}
