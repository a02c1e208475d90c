//! The audit log at a million entries: writing them, verifying the chain,
//! a query and a summary over them (each a full scan), and shipping them to
//! a private redis-server and to an OTLP receiver — with this process's CPU
//! per entry, which is what shipping adds to each audited call (it runs
//! beside the calls, not in them). Run: `cargo bench --bench audit` (VALET_BENCH_ENTRIES to
//! change the count).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use valet_audit::log::Segmenting;
use valet_audit::query::{Filter, scan, summarize};
use valet_audit::ship::{OtlpShipping, RedisShipping, ShipSettings, Shipper, WhenBehind};
use valet_audit::{AuditLog, Durability, Event};
use valet_testkit::RedisServer;

/// This process's CPU time so far (user + system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn report(what: &str, n: u64, wall: Duration, cpu: Duration) {
    println!(
        "{what:<44} {:>8.2} s wall  {:>10.0} entries/s  {:>6.2} µs CPU/entry",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64
    );
}

async fn timed<T>(what: &str, n: u64, work: impl std::future::Future<Output = T>) -> T {
    let (t0, c0) = (Instant::now(), cpu());
    let out = work.await;
    report(what, n, t0.elapsed(), cpu() - c0);
    out
}

#[tokio::main]
async fn main() {
    #[allow(clippy::disallowed_methods)] // a bench knob, not configuration
    let n: u64 = std::env::var("VALET_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open_with(&path, Durability::Os, Segmenting::default()).unwrap();

    timed("write (os durability, 64 MiB segments)", n, async {
        for i in 0..n {
            let event = Event::CredentialLease {
                tenant: format!("t{}", i % 100),
                vendor: "mock".into(),
                fingerprint: "sha256:0123456789abcdef".into(),
                reason: format!("ticket-{}", i % 1000),
                request_id: format!("req-{i}"),
                scopes: None,
                source: Some("10.0.0.7".into()),
            };
            let written = log
                .append_written("key_0123456789abcdef:billing", &event)
                .unwrap();
            if i + 1 == n {
                written.durable().await.unwrap();
            }
        }
    })
    .await;
    let bytes: u64 = valet_audit::segment::files(&path)
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    println!(
        "  {} files, {:.0} MiB",
        valet_audit::segment::files(&path).unwrap().len(),
        bytes as f64 / (1 << 20) as f64
    );

    timed("verify (the whole chain)", n, async {
        assert_eq!(valet_audit::verify(&path).unwrap(), n);
    })
    .await;
    let tenant = Filter {
        tenant: Some("t42".into()),
        ..Filter::default()
    };
    timed("query --tenant (1 % match)", n, async {
        let mut matched = 0u64;
        scan(&path, &tenant, |_| {
            matched += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(matched, n / 100);
    })
    .await;
    let one = Filter {
        request_id: Some(format!("req-{}", n / 2)),
        ..Filter::default()
    };
    timed("query --request-id (1 match)", n, async {
        let (s, _) = summarize(&path, &one).unwrap();
        assert_eq!(s.entries, 1);
    })
    .await;
    timed("summary --tenant", n, async {
        let (s, _) = summarize(&path, &tenant).unwrap();
        assert_eq!(s.entries, n / 100);
    })
    .await;

    let redis = RedisServer::start().await;
    let settings = ShipSettings {
        behind_limit: u64::MAX,
        when_behind: WhenBehind::Continue,
    };
    let to = RedisShipping {
        redis_url: redis.url(),
        max_stream_entries: 0,
        replica: "bench".into(),
    };
    timed("ship to redis (this process's CPU only)", n, async {
        let shipper = Shipper::start(&log, settings, to).unwrap();
        assert!(shipper.wait_for(|s| s.shipped >= n).await);
    })
    .await;
    let collector = valet_testkit::OtlpReceiver::start_counting().await;
    let to = OtlpShipping {
        endpoint: collector.endpoint.clone(),
        replica: "bench".into(),
    };
    // The receiver runs in this process: its CPU is counted too, so this
    // row overstates what shipping costs Valet.
    timed("ship over OTLP (with the receiver's CPU)", n, async {
        let shipper = Shipper::start_otlp(&log, settings, to).unwrap();
        assert!(shipper.wait_for(|s| s.shipped >= n).await);
    })
    .await;
    assert_eq!(collector.log_count(), n);
}
