//! The cost of one admitted quota check: in process (governor) and in Redis
//! (one Lua script round trip to a private redis-server on loopback).
//! Run: `cargo bench --bench quota`. Calls/s through Valet with quotas on
//! and off are in `cargo bench --bench proxy`.

use std::time::{Duration, Instant};
use valet_quota::{Mode, OnBackendError, OperationMatch, Period, Policy, Quotas, Verdict};
use valet_testkit::RedisServer;

/// A policy that never refuses in these runs.
fn generous() -> Policy {
    Policy {
        tenant: "*".into(),
        vendor: "mock".into(),
        operation: OperationMatch::Any,
        rate: 1_000_000,
        period: Period::Second,
        burst: 1_000_000,
        mode: Mode::Enforce,
        aggregate: false,
    }
}

async fn per_check(quotas: &Quotas, n: u32) -> Duration {
    for _ in 0..1_000 {
        quotas.check("acme", "mock", true).await;
    }
    let started = Instant::now();
    for i in 0..n {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let verdict = quotas.check(tenant, "mock", true).await;
        assert!(matches!(verdict, Verdict::Admitted { .. }));
    }
    started.elapsed() / n
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Quotas::open_local(vec![generous()], dir.path().join("quotas.json")).unwrap();
    let local = per_check(&embedded, 200_000).await;

    let redis = RedisServer::start().await;
    let shared = Quotas::open_redis(vec![generous()], &redis.url(), OnBackendError::Local, 1)
        .await
        .unwrap();
    let remote = per_check(&shared, 20_000).await;

    println!("one admitted quota check (most specific policy, two tenants alternating):");
    println!(
        "  embedded (governor, in process):   {:>8.0} ns",
        local.as_nanos() as f64
    );
    println!(
        "  redis (Lua GCRA, loopback):        {:>8.1} us",
        remote.as_nanos() as f64 / 1000.0
    );
}
