//! Where a benchmark ran: CPU model and cores (from `lscpu`), memory, kernel.

use std::process::Command;

/// Where the load generator runs, printed with every result.
pub const LOAD_GENERATOR: &str = "same host as the nodes, over loopback";

/// The host a benchmark ran on.
#[derive(Debug, serde::Serialize)]
pub struct Machine {
    /// `lscpu` "Model name".
    pub cpu_model: String,
    /// Logical CPUs this process may run on.
    pub cores: usize,
    /// `MemTotal` of `/proc/meminfo`, in MiB.
    pub ram_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started: other work sharing the cores skews results.
    pub load_avg_1m: f64,
}

impl Machine {
    /// Reads the machine's description; unknown fields read "unknown" or 0.
    pub fn probe() -> Self {
        let lscpu = Command::new("lscpu")
            .env("LC_ALL", "C")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let cpu_model = field(&lscpu, "Model name").unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_mib = field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu_model,
            cores,
            ram_mib,
            kernel,
            load_avg_1m,
        }
    }

    /// Prints the one-paragraph header of a human-readable report.
    pub fn print(&self) {
        println!(
            "machine: {}, {} cores, {} MiB RAM, Linux {}, load average {:.2} at start",
            self.cpu_model, self.cores, self.ram_mib, self.kernel, self.load_avg_1m
        );
        println!("load generator: {LOAD_GENERATOR}");
        println!();
    }
}

/// The value of `name: value` in `text`.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}
