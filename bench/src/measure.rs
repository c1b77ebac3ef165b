//! Measuring tools shared by the benchmarks: latency percentiles and CPU time from `/proc`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    /// Records one latency.
    pub fn push(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Appends another set of samples.
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Percentiles of the samples.
    pub fn summary(mut self) -> Latency {
        self.0.sort_unstable();
        let n = self.0.len();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let pct = |p: f64| {
            if n == 0 {
                return 0.0;
            }
            // Nearest rank: the smallest sample at or above p percent of them.
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            ms(self.0[rank.clamp(1, n) - 1])
        };
        Latency {
            count: n as u64,
            mean_ms: if n == 0 {
                0.0
            } else {
                self.0.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64 / 1000.0
            },
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            max_ms: self.0.last().copied().map_or(0.0, ms),
        }
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// CPU time of a set of processes and of the whole machine at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// Per labelled process: total ticks and ticks per thread name.
    procs: Vec<(String, u64, BTreeMap<String, u64>)>,
    /// Per labelled process: nanoseconds its threads spent runnable but waiting for a CPU, and
    /// bytes it caused to be written to storage.
    waits: Vec<(u64, u64)>,
    /// Machine-wide (busy, total) ticks from `/proc/stat`, summed over all CPUs.
    machine: (u64, u64),
    /// Per labelled process: resident memory at this instant.
    memory: BTreeMap<String, Memory>,
}

impl CpuSnapshot {
    /// Samples `procs` (label, pid) and the machine.
    pub fn take(procs: &[(String, u32)]) -> Self {
        Self {
            at: Instant::now(),
            procs: procs
                .iter()
                .map(|(label, pid)| {
                    (
                        label.clone(),
                        proc_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0),
                        thread_ticks(*pid),
                    )
                })
                .collect(),
            waits: procs
                .iter()
                .map(|(_, pid)| (runqueue_wait_ns(*pid), write_bytes(*pid)))
                .collect(),
            machine: machine_ticks().unwrap_or((0, 0)),
            memory: procs
                .iter()
                .map(|(label, pid)| (label.clone(), Memory::of(*pid)))
                .collect(),
        }
    }

    /// CPU use between `self` and the later snapshot `end`.
    pub fn until(&self, end: &CpuSnapshot) -> CpuUse {
        let tck = clock_ticks_per_second();
        let wall = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |ticks: u64| ticks as f64 / tck / wall * 100.0;
        let processes = self
            .procs
            .iter()
            .zip(&end.procs)
            .zip(self.waits.iter().zip(&end.waits))
            .map(|(((label, t0, th0), (_, t1, th1)), ((w0, b0), (w1, b1)))| {
                let mut threads: Vec<(String, f64)> = th1
                    .iter()
                    .map(|(name, t)| {
                        (
                            name.clone(),
                            pct(t.saturating_sub(th0.get(name).copied().unwrap_or(0))),
                        )
                    })
                    .filter(|(_, p)| *p >= 0.5)
                    .collect();
                threads.sort_by(|a, b| b.1.total_cmp(&a.1));
                ProcessCpu {
                    label: label.clone(),
                    percent_of_one_core: pct(t1.saturating_sub(*t0)),
                    runqueue_wait_percent: w1.saturating_sub(*w0) as f64 / 1e9 / wall * 100.0,
                    disk_write_mb_per_s: b1.saturating_sub(*b0) as f64 / 1e6 / wall,
                    disk_write_bytes: b1.saturating_sub(*b0),
                    memory: end.memory.get(label).copied().unwrap_or_default(),
                    threads,
                }
            })
            .collect();
        let busy = end.machine.0.saturating_sub(self.machine.0) as f64;
        let total = end.machine.1.saturating_sub(self.machine.1) as f64;
        CpuUse {
            processes,
            machine_busy_percent: if total > 0.0 {
                busy / total * 100.0
            } else {
                0.0
            },
        }
    }
}

/// Where the CPU went during a measurement window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUse {
    pub processes: Vec<ProcessCpu>,
    /// Busy share of all CPUs of the machine (100 = every core busy), whoever used them.
    pub machine_busy_percent: f64,
}

/// CPU use of one process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessCpu {
    pub label: String,
    /// User + system time as a share of one core (200 = two cores busy).
    pub percent_of_one_core: f64,
    /// Time its threads were runnable but not running (waiting for a CPU taken by someone
    /// else), as a share of the window summed over threads: CPU starvation, not CPU use.
    pub runqueue_wait_percent: f64,
    /// `write_bytes` of `/proc/<pid>/io` per second: what it sent to the disk.
    pub disk_write_mb_per_s: f64,
    /// `write_bytes` of `/proc/<pid>/io` over the window.
    pub disk_write_bytes: u64,
    /// Resident memory at the end of the window.
    pub memory: Memory,
    /// The same per thread name (threads of one name summed), busiest first.
    pub threads: Vec<(String, f64)>,
}

impl CpuUse {
    /// Prints one line per process.
    pub fn print(&self) {
        println!("cpu (% of one core; run-queue wait = runnable but no CPU; disk writes):");
        for p in &self.processes {
            let threads: Vec<String> = p
                .threads
                .iter()
                .take(5)
                .map(|(n, v)| format!("{n} {v:.0}"))
                .collect();
            println!(
                "  {:<16} cpu {:>6.1}  wait {:>6.1}  write {:>7.1} MB/s  [{}]",
                p.label,
                p.percent_of_one_core,
                p.runqueue_wait_percent,
                p.disk_write_mb_per_s,
                threads.join(", ")
            );
        }
        println!(
            "  machine busy         {:>6.1}% of all cores (anyone's work)",
            self.machine_busy_percent
        );
    }
}

/// Resident memory of a process, from `/proc/<pid>/status` (0 where it cannot be read).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident, KiB.
    pub peak_kib: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Self {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }
}

/// utime + stime of a `/proc/.../stat` file.
fn proc_ticks(path: &str) -> Option<u64> {
    let (_, t) = stat_fields(path)?;
    Some(t)
}

/// (comm, utime + stime) of a `/proc/.../stat` file.
fn stat_fields(path: &str) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: fields restart after the last ')'.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Ticks per thread name of process `pid`.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path().join("stat");
        if let Some((comm, t)) = path.to_str().and_then(stat_fields) {
            *out.entry(comm).or_insert(0) += t;
        }
    }
    out
}

/// Sum over `pid`'s threads of the second field of `schedstat`: time runnable but waiting.
fn runqueue_wait_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// `write_bytes` of `/proc/<pid>/io` (0 where it cannot be read).
pub fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// (busy, total) ticks of the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `getconf CLK_TCK`, 100 if it cannot be read (the value on every common Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        let l = s.summary();
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Samples::default().summary().p99_ms, 0.0);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let me = std::process::id();
        let t0 = CpuSnapshot::take(&[("me".into(), me)]);
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let u = t0.until(&CpuSnapshot::take(&[("me".into(), me)]));
        assert_eq!(u.processes.len(), 1);
        assert!(u.processes[0].percent_of_one_core >= 0.0);
        let m = u.processes[0].memory;
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
    }
}
