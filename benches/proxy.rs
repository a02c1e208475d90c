//! Proxy overhead: the same vendor calls made (a) by a plain HTTP client
//! straight to the mock vendor and (b) through Valet over gRPC, in one run
//! on loopback, with the same concurrency. Prints calls/s, p50 and p99 for
//! each and the ratios b/a. Run: `cargo bench --bench proxy`
//! (`VALET_BENCH_CALLS`, `VALET_BENCH_CONCURRENCY` to change the load).
//!
//! Valet's path includes a durable audit entry per call (group-committed
//! fsync), so the state dir's disk is part of what is measured. The last run
//! (f) installs the production `tracing` subscriber (spans, JSON call lines
//! to a sink, no exporter) to price telemetry; the other runs have none.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use valet::app::App;
use valet::config::{AuthConfig, Config, VendorConfig};
use valet::proto::gateway_client::GatewayClient;
use valet::proto::{CallRequest, CreateApiKeyRequest, Operation, PutCredentialRequest};
use valet::server::{self, Listeners};
use valet_testkit::{MockVendor, Scripted};

const BODY: &str = r#"{"id":"usr_123","name":"Ada","plan":"pro"}"#;

#[derive(Debug)]
struct Run {
    calls_per_s: f64,
    p50: Duration,
    p99: Duration,
}

// A benchmark's knobs (call counts) come from its runner's environment.
#[allow(clippy::disallowed_methods)]
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let calls = env_usize("VALET_BENCH_CALLS", 20_000);
    let concurrency = env_usize("VALET_BENCH_CONCURRENCY", 32);
    let mock = MockVendor::start().await;
    mock.script(
        "/v1/users/123",
        Scripted::status(200)
            .header("content-type", "application/json")
            .body(BODY),
    );

    // (a) A plain pooled HTTP client, straight to the vendor.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("{}/v1/users/123", mock.base_url()).parse().unwrap();
    let direct = measure(calls, concurrency, move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client.get(url).await.expect("vendor answers");
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.expect("body");
        }
    })
    .await;

    // (b) The same call through Valet, its state (audit log) on disk; and,
    // where /dev/shm exists, (c) on tmpfs, where fsync is free — the gap
    // between them is the cost of the durable audit entry.
    let mut runs = vec![("(a) direct HTTP client", direct)];
    let disk = tempfile::tempdir().unwrap();
    runs.push((
        "(b) Valet, state on disk",
        through_valet(&mock, disk.path(), calls, concurrency).await,
    ));
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        runs.push((
            "(c) Valet, state on tmpfs",
            through_valet(&mock, shm.path(), calls, concurrency).await,
        ));
    }
    // (d) and (e): as (b), with a quota policy that admits every call,
    // checked in process and in Redis: what quotas cost a call.
    let quota_local = tempfile::tempdir().unwrap();
    runs.push((
        "(d) Valet + quota (local)",
        through_valet_with(&mock, quota_local.path(), calls, concurrency, Quota::Local).await,
    ));
    let redis = valet_testkit::RedisServer::start().await;
    let quota_redis = tempfile::tempdir().unwrap();
    runs.push((
        "(e) Valet + quota (redis)",
        through_valet_with(
            &mock,
            quota_redis.path(),
            calls,
            concurrency,
            Quota::Redis(redis.url()),
        )
        .await,
    ));

    // (f) as (b), with the production subscriber installed: a server span,
    // child spans and a JSON log line per call (written to a sink), no
    // exporter. Last, because the subscriber is process-wide.
    let _telemetry =
        valet_telemetry::subscriber::init_with(&Default::default(), std::io::sink).expect("telemetry starts");
    let traced = tempfile::tempdir().unwrap();
    runs.push((
        "(f) Valet + spans and logs",
        through_valet(&mock, traced.path(), calls, concurrency).await,
    ));

    println!(
        "proxy overhead: {calls} GET calls, {concurrency} in flight, loopback, {} cores",
        cores()
    );
    println!("{:<28} {:>12} {:>10} {:>10}", "", "calls/s", "p50", "p99");
    for (name, r) in &runs {
        println!(
            "{name:<28} {:>12.0} {:>10.2?} {:>10.2?}",
            r.calls_per_s, r.p50, r.p99
        );
    }
    let base = &runs[0].1;
    for (name, r) in &runs[1..] {
        println!(
            "ratio {}/a: throughput {:.2}, p50 latency {:.2}, p99 latency {:.2}",
            &name[1..2],
            r.calls_per_s / base.calls_per_s,
            r.p50.as_secs_f64() / base.p50.as_secs_f64(),
            r.p99.as_secs_f64() / base.p99.as_secs_f64()
        );
    }
}

/// Starts Valet with its state under `state` and measures calls through it.
/// Quota set-up for a run.
enum Quota {
    Off,
    Local,
    Redis(String),
}

async fn through_valet(mock: &MockVendor, state: &std::path::Path, calls: usize, concurrency: usize) -> Run {
    through_valet_with(mock, state, calls, concurrency, Quota::Off).await
}

async fn through_valet_with(
    mock: &MockVendor,
    state: &std::path::Path,
    calls: usize,
    concurrency: usize,
    quota: Quota,
) -> Run {
    let (gateway, key) = start_valet(mock, state, quota).await;
    let request = CallRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: Operation::Read as i32,
        method: "GET".into(),
        path: "/v1/users/123".into(),
        reason: "bench".into(),
        ..Default::default()
    };
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    measure(calls, concurrency, move || {
        let (mut gateway, request, auth) = (gateway.clone(), request.clone(), auth.clone());
        async move {
            let mut req = tonic::Request::new(request);
            req.metadata_mut().insert("authorization", auth);
            let resp = gateway.call(req).await.expect("valet answers").into_inner();
            assert_eq!(resp.status, 200);
        }
    })
    .await
}

/// Runs `calls` calls of `one`, `concurrency` at a time, after a warm-up.
async fn measure<F, Fut>(calls: usize, concurrency: usize, one: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..200 {
        one().await;
    }
    let per_worker = calls / concurrency;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_worker);
                for _ in 0..per_worker {
                    let t = Instant::now();
                    one().await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        calls_per_s: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

async fn start_valet(
    mock: &MockVendor,
    state: &std::path::Path,
    quota: Quota,
) -> (GatewayClient<tonic::transport::Channel>, String) {
    let mut config = Config {
        vendors: vec![VendorConfig {
            allow_insecure_http: true,
            timeout_ms: 10_000,
            ..VendorConfig::new("mock", mock.base_url(), AuthConfig::Bearer {})
        }],
        ..Config::default()
    };
    config.state.dir = state.join("state");
    let generous = valet_quota::Policy {
        tenant: "*".into(),
        vendor: "mock".into(),
        operation: valet_quota::OperationMatch::Any,
        rate: 1_000_000,
        period: valet_quota::Period::Second,
        burst: 1_000_000,
        mode: valet_quota::Mode::Enforce,
        aggregate: false,
    };
    match quota {
        Quota::Off => {}
        Quota::Local => config.quota.policies = vec![generous],
        Quota::Redis(url) => {
            config.quota.policies = vec![generous];
            config.quota.backend = valet::config::QuotaBackend::Redis;
            config.quota.redis_url = Some(url);
        }
    }
    let app = Arc::new(App::open(&config).await.expect("valet starts"));
    let listeners = Listeners {
        gateway: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ops: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let (gw, admin) = (
        listeners.gateway.local_addr().unwrap(),
        listeners.admin.local_addr().unwrap(),
    );
    let options = server::ServeOptions::from_config(&config.server).expect("server options");
    tokio::spawn(server::serve(app, listeners, options, std::future::pending()));

    let admin_key = std::fs::read_to_string(config.state.dir.join("admin.key")).unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", admin_key.trim()).parse().unwrap();
    let mut admin_client = valet::proto::admin_client::AdminClient::connect(format!("http://{admin}"))
        .await
        .unwrap();
    let mut put = tonic::Request::new(PutCredentialRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        secret: "bench-secret-0123456789".into(),
    });
    put.metadata_mut().insert("authorization", bearer.clone());
    admin_client.put_credential(put).await.unwrap();
    let mut create = tonic::Request::new(CreateApiKeyRequest::gateway(
        "bench",
        &["acme"],
        &["mock"],
        &[Operation::Read],
    ));
    create.metadata_mut().insert("authorization", bearer);
    let key = admin_client
        .create_api_key(create)
        .await
        .unwrap()
        .into_inner()
        .key;
    let gateway = GatewayClient::connect(format!("http://{gw}")).await.unwrap();
    (gateway, key)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
