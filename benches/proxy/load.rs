//! The load: h2load (one external generator for every proxy) and, for WRITE
//! calls whose idempotency keys must each be new, a gRPC client in this
//! process. Both report calls/s and latency percentiles; the CPU and memory
//! are read around the run from the proxy's own `/proc` entries.

use crate::procstat::Tree;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How many calls are in flight: h2load's clients × streams per client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct InFlight {
    pub(crate) clients: usize,
    pub(crate) streams: usize,
}

impl InFlight {
    pub(crate) fn total(self) -> usize {
        self.clients * self.streams
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) calls_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU time of the proxy per call (None: nothing between client and vendor).
    pub(crate) cpu_per_call: Option<Duration>,
    pub(crate) rss: Option<u64>,
    pub(crate) succeeded: u64,
}

/// An h2load target: the URL and what every request carries.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    /// `-H` headers and, for gRPC, `-d` with the framed request.
    pub(crate) args: Vec<String>,
}

/// Runs h2load against `target` for `secs`, optionally paced to `rate`
/// calls/s in total, and reads `proxy`'s CPU time around it.
pub(crate) fn h2load(
    dir: &Path,
    target: &Target,
    in_flight: InFlight,
    secs: u64,
    rate: Option<f64>,
    proxy: Option<Tree>,
) -> Sample {
    let log = dir.join("h2load.log");
    // h2load appends to its log file.
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("h2load");
    cmd.args(["-t", "1"])
        .args(["-c", &in_flight.clients.to_string()])
        .args(["-m", &in_flight.streams.to_string()])
        .args(["-D", &secs.to_string()])
        .arg(format!("--log-file={}", log.display()))
        .args(&target.args);
    if let Some(rate) = rate {
        let per_client = (rate / in_flight.clients as f64).max(1.0);
        cmd.arg(format!("--rps={per_client:.0}"));
    }
    cmd.arg(&target.url);
    let cpu_before = proxy.map(Tree::cpu);
    let out = cmd
        .output()
        .expect("h2load runs (scripts/bench installs nghttp2-client)");
    let cpu_after = proxy.map(Tree::cpu);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "h2load failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let succeeded = field(&stdout, "succeeded");
    let mut latencies: Vec<u64> = std::fs::read_to_string(&log)
        .expect("h2load log")
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (_start, status, micros) = (cols.next()?, cols.next()?, cols.next()?);
            status
                .starts_with('2')
                .then(|| micros.trim().parse().ok())
                .flatten()
        })
        .collect();
    assert!(
        succeeded > 0 && !latencies.is_empty(),
        "no successful requests: {stdout}"
    );
    latencies.sort_unstable();
    let pct = |p: f64| {
        Duration::from_micros(latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)])
    };
    Sample {
        calls_per_s: succeeded as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_call: cpu_before.zip(cpu_after).map(|(a, b)| (b - a) / succeeded as u32),
        rss: proxy.map(Tree::rss),
        succeeded,
    }
}

/// `N succeeded` from h2load's `requests:` line.
fn field(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            l.split(',')
                .find(|part| part.trim_end().ends_with(name))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// `in_flight` tonic clients' worth of calls made by `one` for `secs`;
/// each call gets its sequence number (for fresh idempotency keys).
pub(crate) async fn grpc<F, Fut>(in_flight: usize, secs: u64, proxy: Tree, one: F) -> Sample
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu_before = proxy.cpu();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (one, counter) = (one.clone(), counter.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t = Instant::now();
                    if one(n).await {
                        latencies.push(t.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let cpu_after = proxy.cpu();
    assert!(!all.is_empty(), "no successful calls");
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let succeeded = all.len() as u64;
    Sample {
        calls_per_s: succeeded as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_call: Some((cpu_after - cpu_before) / succeeded as u32),
        rss: Some(proxy.rss()),
        succeeded,
    }
}
