//! CPU time and resident memory of a process and its children, read from
//! `/proc`: what a proxy costs, whatever its threads or worker processes.

use std::time::Duration;

/// A process and the ones it started (nginx's workers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree(pub u32);

impl Tree {
    /// User + system CPU time used so far by the process and its children.
    pub(crate) fn cpu(self) -> Duration {
        let ticks: u64 = self.pids().iter().filter_map(|pid| ticks(*pid)).sum();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// Resident set size of the process and its children, in bytes.
    pub(crate) fn rss(self) -> u64 {
        self.pids().iter().filter_map(|pid| rss(*pid)).sum()
    }

    fn pids(self) -> Vec<u32> {
        let mut pids = vec![self.0];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) == Some(self.0) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split(' ').map(str::to_owned).collect())
}

/// utime + stime (fields 14 and 15 of `stat`, 11 and 12 after the name).
fn ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on Linux unless configured).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
