//! What Valet costs a vendor call, against what a platform team would
//! otherwise run — measured side by side in one run on this machine.
//!
//! Run: `scripts/bench` (installs nginx-light and h2load, then
//! `cargo bench --bench proxy`). Rows, each a separate process driven by the
//! same external load generator (h2load, h2c, one thread):
//!
//! - **direct**: h2load straight to the vendor (nginx returning a static 200);
//! - **nginx**: nginx as a reverse proxy injecting `Authorization` — the
//!   hand-rolled gateway;
//! - **limit**: a minimal hyper proxy doing only that ([`limit`]) — the
//!   physical limit of this stack;
//! - **valet**: `valet serve` on its embedded defaults as shipped (state on
//!   disk, `tracing` subscriber, JSON call line on a piped stdout), READ
//!   calls as gRPC frames.
//!
//! Saturation at 64 and at 512 in flight, then latency at half of Valet's
//! own saturation (paced), then WRITE calls with fresh idempotency keys (a
//! gRPC client in this process, since every body must differ; compared with
//! READ calls from the same client). Rows are interleaved over rounds (the
//! order rotating each round) and each cell is the median over rounds with
//! the spread (min–max). CPU per call is the proxy's user + system time
//! from `/proc` over the run divided by its calls; RSS is read at the end.
//!
//! Knobs: `VALET_BENCH_ROUNDS` (3), `VALET_BENCH_SECONDS` (5 per run).

mod limit;
mod load;
mod peers;
mod procstat;
mod serve;

use load::{InFlight, Sample, Target};
use prost::Message as _;
use std::collections::BTreeMap;
use std::time::Duration;
use valet::proto::{CallRequest, Operation};

// A benchmark's knobs come from its runner's environment.
#[allow(clippy::disallowed_methods)]
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const AT_64: InFlight = InFlight {
    clients: 4,
    streams: 16,
};
const AT_512: InFlight = InFlight {
    clients: 8,
    streams: 64,
};

/// One row of the table: something measured once per round.
struct Row {
    name: String,
    run: Box<dyn Fn(&std::path::Path) -> Sample>,
}

#[allow(clippy::disallowed_methods)]
fn main() {
    if let Ok(args) = std::env::var(limit::ROLE) {
        let (port, vendor) = args.split_once(' ').expect("PORT URL");
        limit::run(port.parse().expect("port"), vendor.to_owned());
    }
    if let Ok(port) = std::env::var(limit::SLOW_VENDOR) {
        limit::slow_vendor(port.parse().expect("port"));
    }
    let rounds = env_u64("VALET_BENCH_ROUNDS", 3);
    let secs = env_u64("VALET_BENCH_SECONDS", 5);
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("tempdir on disk");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let (vendor_http1, vendor_h2c) = (free_port(), free_port());
    let _vendor = peers::vendor(dir.path(), vendor_http1, vendor_h2c);
    let nginx_port = free_port();
    let nginx = peers::nginx_proxy(dir.path(), nginx_port, vendor_http1);
    let limit_port = free_port();
    let limit = peers::limit_proxy(limit_port, vendor_http1);
    let slow_port = free_port();
    let _slow = peers::slow_vendor(slow_port);
    // Valet as shipped (audit durability `before_answer`), with the two
    // other modes, exporting traces to a collector, and holding 10,000
    // tenants' credentials: each its own process and state dir.
    let start = |name: &str, extra: &str| {
        let valet_dir = dir.path().join(format!("valet-{name}"));
        std::fs::create_dir_all(&valet_dir).expect("valet dir");
        serve::start(&valet_dir, vendor_http1, slow_port, extra)
    };
    let durability = |mode: &str| format!("[audit]\ndurability = \"{mode}\"\n");
    let valet = start("default", "");
    let modes = [
        ("before_send", start("before_send", &durability("before_send"))),
        ("os", start("os", &durability("os"))),
    ];
    let collector = runtime.block_on(valet_testkit::otlp::OtlpReceiver::start_counting());
    let exporting = |ratio: f64| {
        format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nsampling_ratio = {ratio:?}\n",
            collector.endpoint
        )
    };
    let traced = start("otlp", &exporting(1.0));
    let traced_tenth = start("otlp-tenth", &exporting(0.1));
    let crowd = start("tenants", "");
    let crowd_key = runtime.block_on(crowd.many_tenants(TENANTS));

    let path = "/v1/users/123";
    let direct = Target {
        url: format!("http://127.0.0.1:{vendor_h2c}{path}"),
        args: vec![],
    };
    let through_nginx = Target {
        url: format!("http://127.0.0.1:{nginx_port}{path}"),
        args: vec![],
    };
    let through_limit = Target {
        url: format!("http://127.0.0.1:{limit_port}{path}"),
        args: vec![],
    };
    let through =
        |v: &serve::Valet, vendor: &str| grpc_target(dir.path(), v.gateway_port, &v.read_key, vendor, path);
    let through_valet = through(&valet, "mock");
    runtime.block_on(check_one_call(valet.gateway_port, &valet.read_key, path));

    // Half of Valet's own saturation, from a short calibration run.
    let calibration = load::h2load(
        dir.path(),
        &through_valet,
        AT_64,
        2,
        None,
        Some(valet.process.tree()),
    );
    let half = calibration.calls_per_s / 2.0;

    let mut rows: Vec<Row> = Vec::new();
    let mut add = |name: String, run: Box<dyn Fn(&std::path::Path) -> Sample>| rows.push(Row { name, run });
    for in_flight in [AT_64, AT_512] {
        let n = in_flight.total();
        let (t, p) = (direct.clone(), None);
        add(
            format!("direct, {n} in flight"),
            Box::new(move |d| load::h2load(d, &t, in_flight, secs, None, p)),
        );
        let (t, p) = (through_nginx.clone(), Some(nginx.tree()));
        add(
            format!("nginx, {n} in flight"),
            Box::new(move |d| load::h2load(d, &t, in_flight, secs, None, p)),
        );
        let (t, p) = (through_limit.clone(), Some(limit.tree()));
        add(
            format!("limit, {n} in flight"),
            Box::new(move |d| load::h2load(d, &t, in_flight, secs, None, p)),
        );
        let (t, p) = (through_valet.clone(), Some(valet.process.tree()));
        add(
            format!("valet, {n} in flight"),
            Box::new(move |d| load::h2load(d, &t, in_flight, secs, None, p)),
        );
    }
    let variants = modes
        .iter()
        .map(|(m, v)| (*m, v))
        .chain([("otlp", &traced), ("otlp 10%", &traced_tenth)]);
    for (mode, v) in variants {
        let (t, p) = (through(v, "mock"), Some(v.process.tree()));
        add(
            format!("valet {mode}, 64 in flight"),
            Box::new(move |d| load::h2load(d, &t, AT_64, secs, None, p)),
        );
    }
    let mut paced = vec![
        ("direct".to_owned(), direct.clone(), None),
        ("nginx".to_owned(), through_nginx.clone(), Some(nginx.tree())),
        (
            "valet".to_owned(),
            through_valet.clone(),
            Some(valet.process.tree()),
        ),
    ];
    for (mode, v) in &modes {
        paced.push((
            format!("valet {mode}"),
            through(v, "mock"),
            Some(v.process.tree()),
        ));
    }
    for (name, target, tree) in paced {
        add(
            format!("{name}, paced at {half:.0}/s"),
            Box::new(move |d| load::h2load(d, &target, AT_64, secs, Some(half), tree)),
        );
    }
    // A vendor that takes 20 ms: the fsync overlaps its round trip.
    let slow_rate = 1000.0;
    let slow_direct = Target {
        url: format!("http://127.0.0.1:{slow_port}{path}"),
        args: vec![],
    };
    let mut slow = vec![
        ("direct".to_owned(), slow_direct, None),
        (
            "valet".to_owned(),
            through(&valet, "slow"),
            Some(valet.process.tree()),
        ),
    ];
    for (mode, v) in &modes {
        slow.push((
            format!("valet {mode}"),
            through(v, "slow"),
            Some(v.process.tree()),
        ));
    }
    for (name, target, tree) in slow {
        add(
            format!("{name}, 20 ms vendor at {slow_rate:.0}/s"),
            Box::new(move |d| load::h2load(d, &target, AT_64, secs, Some(slow_rate), tree)),
        );
    }
    let handle = runtime.handle().clone();
    for operation in [Operation::Read, Operation::Write] {
        let (handle, port, tree) = (handle.clone(), valet.gateway_port, valet.process.tree());
        let key = if operation == Operation::Read {
            valet.read_key.clone()
        } else {
            valet.write_key.clone()
        };
        add(
            format!("valet {} (gRPC client), 64 in flight", operation.as_str_name()),
            Box::new(move |_| {
                let run = format!(
                    "{:x}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                );
                let request = move |n| read_or_write(operation, &run, n);
                handle.block_on(grpc_calls(port, &key, secs, tree, request))
            }),
        );
    }
    {
        let (handle, port, tree, key) = (
            handle.clone(),
            crowd.gateway_port,
            crowd.process.tree(),
            crowd_key.clone(),
        );
        add(
            format!("valet {TENANTS} tenants (gRPC client), 64 in flight"),
            Box::new(move |_| handle.block_on(grpc_calls(port, &key, secs, tree, tenant_read))),
        );
    }
    let all_valets: Vec<u16> = [
        valet.ops_port,
        traced.ops_port,
        traced_tenth.ops_port,
        crowd.ops_port,
    ]
    .into_iter()
    .chain(modes.iter().map(|(_, v)| v.ops_port))
    .collect();

    let mut results: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds as usize {
        for i in 0..rows.len() {
            let i = (i + round) % rows.len();
            let counted = || all_valets.iter().map(|p| serve::calls_counted(*p).0).sum::<u64>();
            let ok_before = counted();
            let sample = (rows[i].run)(dir.path());
            let ok_after = counted();
            if rows[i].name.starts_with("valet") {
                // h2load counts HTTP 200s; a gRPC error is a 200 too. Valet's
                // own count of OK calls must agree.
                let ok = ok_after - ok_before;
                assert!(
                    ok as f64 >= sample.succeeded as f64 * 0.999,
                    "{}: h2load counted {} answers but Valet only {ok} OK calls",
                    rows[i].name,
                    sample.succeeded
                );
            }
            eprintln!(
                "round {} {:<40} {:>8.0} calls/s",
                round + 1,
                rows[i].name,
                sample.calls_per_s
            );
            results.entry(i).or_default().push(sample);
        }
    }
    print_table(&rows, &results, rounds);
    println!(
        "spans the collector received from both `valet otlp` rows: {}",
        collector.span_count()
    );
}

/// The h2load target for READ calls through Valet: the framed request in a
/// file, POSTed with the gRPC headers.
fn grpc_target(dir: &std::path::Path, port: u16, key: &str, vendor: &str, path: &str) -> Target {
    let mut request = read_request(path);
    request.vendor = vendor.into();
    let message = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let file = dir.join(format!("call-{port}-{vendor}.grpc"));
    std::fs::write(&file, frame).expect("frame");
    Target {
        url: format!("http://127.0.0.1:{port}/valet.v1.Gateway/Call"),
        args: vec![
            "-d".into(),
            file.display().to_string(),
            "-H".into(),
            "content-type: application/grpc".into(),
            "-H".into(),
            "te: trailers".into(),
            "-H".into(),
            format!("authorization: Bearer {key}"),
        ],
    }
}

fn read_request(path: &str) -> CallRequest {
    CallRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: Operation::Read as i32,
        method: "GET".into(),
        path: path.into(),
        reason: "bench".into(),
        ..Default::default()
    }
}

type Gateway = valet::proto::gateway_client::GatewayClient<tonic::transport::Channel>;

async fn gateway(port: u16) -> Gateway {
    Gateway::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect")
}

/// One call with a real gRPC client: OK, the vendor's status and body.
async fn check_one_call(port: u16, key: &str, path: &str) {
    let mut request = tonic::Request::new(read_request(path));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().expect("key"));
    let answer = gateway(port)
        .await
        .call(request)
        .await
        .expect("a READ call succeeds")
        .into_inner();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, peers::BODY.as_bytes());
}

/// Calls from this process's gRPC client (4 connections), 64 in flight;
/// the `n`-th call is `request(n)`.
async fn grpc_calls<F>(port: u16, key: &str, secs: u64, valet: procstat::Tree, request: F) -> Sample
where
    F: Fn(u64) -> CallRequest + Clone + Send + Sync + 'static,
{
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(gateway(port).await);
    }
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {key}").parse().expect("key");
    load::grpc(64, secs, valet, move |n| {
        let mut client = channels[n as usize % channels.len()].clone();
        let mut call = tonic::Request::new(request(n));
        call.metadata_mut().insert("authorization", auth.clone());
        async move {
            client
                .call(call)
                .await
                .is_ok_and(|a| a.into_inner().status == 200)
        }
    })
    .await
}

/// The `n`-th READ, or WRITE with a new idempotency key (`run` tells this
/// run's keys from an earlier run's).
fn read_or_write(operation: Operation, run: &str, n: u64) -> CallRequest {
    let mut call = read_request("/v1/users");
    if operation == Operation::Write {
        call.operation = Operation::Write as i32;
        call.method = "POST".into();
        call.body = br#"{"name":"Ada"}"#.to_vec();
        call.idempotency_key = format!("bench-{run}-{n}");
    }
    call
}

/// Tenants the `valet tenants` process holds credentials for.
const TENANTS: usize = 10_000;

/// The `n`-th READ spread over [`TENANTS`] tenants, each with its own
/// credential: the lease cache, the quota limiters and the metrics' tenant
/// labels all see every one of them.
fn tenant_read(n: u64) -> CallRequest {
    CallRequest {
        tenant: format!("t{}", n as usize % TENANTS),
        ..read_request("/v1/users")
    }
}

fn print_table(rows: &[Row], results: &BTreeMap<usize, Vec<Sample>>, rounds: u64) {
    println!(
        "\nproxy cost: {rounds} rounds, {} cores, h2load and the vendor on the same machine; median (min–max)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<40} {:>22} {:>8} {:>8} {:>18} {:>8}",
        "", "calls/s", "p50", "p99", "CPU/call", "RSS"
    );
    let medians: BTreeMap<&str, Sample> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| (row.name.as_str(), median(&results[&i])))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let samples = &results[&i];
        let m = medians[row.name.as_str()];
        let (lo, hi) = spread(samples, |s| s.calls_per_s);
        let cpu = match m.cpu_per_call {
            Some(c) => {
                let (lo, hi) = spread(samples, |s| {
                    s.cpu_per_call.unwrap_or_default().as_secs_f64() * 1e6
                });
                format!("{:.1} µs ({lo:.0}–{hi:.0})", c.as_secs_f64() * 1e6)
            }
            None => "-".into(),
        };
        let rss = m.rss.map_or("-".into(), |r| format!("{} MiB", r / (1024 * 1024)));
        println!(
            "{:<40} {:>8.0} ({lo:>5.0}–{hi:<5.0}) {:>8} {:>8} {cpu:>18} {rss:>8}",
            row.name,
            m.calls_per_s,
            ms(m.p50),
            ms(m.p99)
        );
    }
    println!();
    for n in [64, 512] {
        let (valet, nginx, limit) = (
            medians[format!("valet, {n} in flight").as_str()],
            medians[format!("nginx, {n} in flight").as_str()],
            medians[format!("limit, {n} in flight").as_str()],
        );
        let cpu = |s: Sample| s.cpu_per_call.unwrap_or_default().as_secs_f64();
        println!(
            "{n} in flight: throughput valet/nginx {:.2}, valet/limit {:.2}; CPU per call valet/nginx {:.1}, valet/limit {:.1}",
            valet.calls_per_s / nginx.calls_per_s,
            valet.calls_per_s / limit.calls_per_s,
            cpu(valet) / cpu(nginx),
            cpu(valet) / cpu(limit),
        );
    }
    let find = |prefix: &str, contains: &str| {
        medians
            .iter()
            .find(|(k, _)| k.starts_with(&format!("{prefix}, ")) && k.contains(contains))
            .map(|(_, s)| *s)
    };
    for (scenario, contains) in [
        ("half of Valet's saturation", "paced"),
        ("a 20 ms vendor", "20 ms vendor"),
    ] {
        let Some(direct) = find("direct", contains) else {
            continue;
        };
        let added: Vec<String> = ["nginx", "valet", "valet before_send", "valet os"]
            .iter()
            .filter_map(|name| {
                let s = find(name, contains)?;
                Some(format!(
                    "{name} +{} p50 / +{} p99",
                    ms(s.p50.saturating_sub(direct.p50)),
                    ms(s.p99.saturating_sub(direct.p99))
                ))
            })
            .collect();
        println!("added latency at {scenario}: {}", added.join("; "));
    }
    for (sampled, row) in [("every call", "valet otlp"), ("10 % of calls", "valet otlp 10%")] {
        let (Some(off), Some(on)) = (
            medians.get("valet, 64 in flight"),
            medians.get(format!("{row}, 64 in flight").as_str()),
        ) else {
            continue;
        };
        let cpu = |s: &Sample| s.cpu_per_call.unwrap_or_default().as_secs_f64();
        println!(
            "traces of {sampled} exported over OTLP / none (64 in flight): throughput {:.2}, CPU per call {:.2}",
            on.calls_per_s / off.calls_per_s,
            cpu(on) / cpu(off)
        );
    }
    let grpc = |op: &str| {
        medians
            .iter()
            .find(|(k, _)| k.starts_with(&format!("valet {op}")))
            .map(|(_, s)| *s)
    };
    if let (Some(read), Some(write)) = (grpc("READ"), grpc("WRITE")) {
        println!(
            "WRITE with fresh idempotency keys / READ (same client): {:.2}",
            write.calls_per_s / read.calls_per_s
        );
    }
}

fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.calls_per_s.total_cmp(&b.calls_per_s));
    let mut m = sorted[sorted.len() / 2];
    let mid = |f: &dyn Fn(&Sample) -> Duration| {
        let mut v: Vec<Duration> = samples.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    m.p50 = mid(&|s| s.p50);
    m.p99 = mid(&|s| s.p99);
    m.cpu_per_call = m
        .cpu_per_call
        .map(|_| mid(&|s| s.cpu_per_call.unwrap_or_default()));
    m
}

fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64) {
    samples
        .iter()
        .map(f)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A free loopback port (bound, then released for a child to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits (up to 10 s) until something accepts on `port`: a child process
/// gives no other signal that it listens. Runs on the main thread, outside
/// the runtime, so sleeping between tries blocks no worker.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned())
}
