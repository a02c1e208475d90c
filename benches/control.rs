//! The fleet's control state: how long a revoke and a tenant disable take
//! to hold on the other replicas, and what the checks cost a call.
//!
//! 1. Propagation: Redis and three `valet serve` processes on loopback.
//!    Each trial revokes a key (or disables a tenant) through replica B's
//!    Admin API and times, from the moment the RPC returned, until replicas
//!    A and C both refuse the key (or tenant). p50/p99/max over the trials.
//! 2. Hot path: `KeyStore::authenticate` (one SHA-256 and one map lookup)
//!    and `KeyStore::tenant_disabled` with 1,000 keys and 100 disabled
//!    tenants, ns per check, with an empty-map check as the floor.
//!
//! Run: `cargo bench --bench control` (100 trials; `-- 20` for fewer).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{ValetProcess, admin_cli, authed, get, reason};
use valet::proto::admin_client::AdminClient;
use valet::proto::{
    CreateApiKeyRequest, Operation as ProtoOperation, RevokeApiKeyRequest, SetTenantStatusRequest,
    TenantState,
};
use valet_access::{Grant, KeyStore, Operation, TenantStatus};
use valet_testkit::{MockVendor, RedisServer};

/// Trials per measurement: the first numeric argument, else 100.
fn trials() -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100)
}

/// Polls `replica` until `refused` says the call is refused; returns when.
async fn refused_on(replica: &ValetProcess, key: &str, wire: &str) -> Instant {
    let mut gateway = replica.gateway().await;
    loop {
        match gateway.call(authed(get("acme", "mock", "/v1/x"), key)).await {
            Err(e) if reason(&e) == wire => return Instant::now(),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  {label:<28} p50 {:>6.0} ms   p99 {:>6.0} ms   max {:>6.0} ms   ({} trials)",
        at(0.5),
        at(0.99),
        ms[ms.len() - 1],
        ms.len()
    );
}

async fn propagation() {
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    let body = format!(
        "redis_url = \"{}\"\n[control]\nbackend = \"redis\"\n[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        redis.url(),
        mock.base_url()
    );
    let a = ValetProcess::spawn(&body).await;
    let b = ValetProcess::spawn(&body).await;
    let c = ValetProcess::spawn(&body).await;
    let admin = a.key_file.clone();
    let admin_key = std::fs::read_to_string(&admin).unwrap().trim().to_owned();
    for replica in [&a, &b, &c] {
        let out = admin_cli(
            &replica.admin_url,
            &admin,
            &["credential", "put", "--tenant", "acme", "--vendor", "mock"],
            "bench-control-secret-0001\n",
        )
        .await;
        assert!(out.status.success());
    }
    let mut on_a = AdminClient::connect(a.admin_url.clone()).await.unwrap();
    let mut on_b = AdminClient::connect(b.admin_url.clone()).await.unwrap();
    let request = || {
        authed(
            CreateApiKeyRequest::gateway("bench", &["acme"], &["mock"], &[ProtoOperation::Read]),
            &admin_key,
        )
    };
    let (mut revokes, mut disables) = (Vec::new(), Vec::new());
    for _ in 0..trials() {
        // Revoke.
        let created = on_a.create_api_key(request()).await.unwrap().into_inner();
        let (key, id) = (created.key, created.info.unwrap().id);
        for replica in [&a, &b, &c] {
            let mut gateway = replica.gateway().await;
            while gateway
                .call(authed(get("acme", "mock", "/v1/x"), &key))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        on_b.revoke_api_key(authed(
            RevokeApiKeyRequest {
                id,
                ..Default::default()
            },
            &admin_key,
        ))
        .await
        .unwrap();
        let done = Instant::now();
        let (ta, tc) = tokio::join!(
            refused_on(&a, &key, "API_KEY_REVOKED"),
            refused_on(&c, &key, "API_KEY_REVOKED")
        );
        revokes.push(ta.max(tc).duration_since(done).as_secs_f64() * 1000.0);

        // Disable, then enable again.
        let key = on_a.create_api_key(request()).await.unwrap().into_inner().key;
        for replica in [&a, &b, &c] {
            let mut gateway = replica.gateway().await;
            while gateway
                .call(authed(get("acme", "mock", "/v1/x"), &key))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let status = |state: TenantState| SetTenantStatusRequest {
            tenant: "acme".into(),
            state: state as i32,
            reason: "bench".into(),
            ..Default::default()
        };
        on_b.set_tenant_status(authed(status(TenantState::Disabled), &admin_key))
            .await
            .unwrap();
        let done = Instant::now();
        let (ta, tc) = tokio::join!(
            refused_on(&a, &key, "TENANT_DISABLED"),
            refused_on(&c, &key, "TENANT_DISABLED")
        );
        disables.push(ta.max(tc).duration_since(done).as_secs_f64() * 1000.0);
        on_b.set_tenant_status(authed(status(TenantState::Enabled), &admin_key))
            .await
            .unwrap();
    }
    println!(
        "propagation to two other replicas (pub/sub, poll every 250 ms as fallback), 3 processes, one Redis, loopback:"
    );
    summary("revoke on B -> refused on A, C", revokes);
    summary("disable on B -> refused on A, C", disables);
    for p in [a, b, c] {
        p.terminate().await;
    }
}

fn per_op(n: u32, mut op: impl FnMut(u32)) -> f64 {
    for i in 0..10_000 {
        op(i);
    }
    let started = Instant::now();
    for i in 0..n {
        op(i);
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

async fn hot_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&dir.path().join("apikeys.json")).unwrap();
    let grant = Grant {
        tenants: vec!["acme".into()],
        vendors: vec!["mock".into()],
        operations: [Operation::Read].into(),
        admin: false,
        permissions: Default::default(),
    };
    let mut keys = Vec::new();
    for i in 0..1_000 {
        let (key, _) = store
            .create(&format!("k{i}"), grant.clone(), None, None)
            .await
            .unwrap();
        keys.push(key.expose().to_owned());
    }
    let n = 1_000_000;
    let none_disabled = per_op(n, |i| {
        std::hint::black_box(store.tenant_disabled("acme", if i % 2 == 0 { "mock" } else { "other" }));
    });
    for t in 0..100 {
        let status = TenantStatus {
            tenant: format!("t{t}"),
            vendor: None,
            reason: "bench".into(),
            actor: "bench".into(),
            disabled_ms: 0,
            compromised: Vec::new(),
            offboarded_until_ms: None,
        };
        store.disable(status, false).await.unwrap();
    }
    let some_disabled = per_op(n, |i| {
        let tenant = if i % 2 == 0 { "acme" } else { "t7" };
        std::hint::black_box(store.tenant_disabled(tenant, "mock"));
    });
    let authenticate = per_op(n, |i| {
        std::hint::black_box(store.authenticate(&keys[i as usize % keys.len()]).is_ok());
    });
    println!("hot-path checks, one thread, ns per check:");
    println!("  tenant status, nothing disabled:        {none_disabled:>6.0} ns");
    println!("  tenant status, 100 tenants disabled:    {some_disabled:>6.0} ns");
    println!("  API key (SHA-256 + lookup), 1000 keys:  {authenticate:>6.0} ns");
    println!(
        "  tenant check / key check:               {:>6.2}",
        some_disabled / authenticate
    );
}

#[tokio::main]
async fn main() {
    hot_path().await;
    propagation().await;
}
