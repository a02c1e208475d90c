//! What OAuth costs: token requests per 10,000 calls, and the price of a
//! warm OAuth lease over a static credential's. Run:
//! `cargo bench --bench oauth` (no external services: the mock provider
//! from the test kit on loopback).
//!
//! 1. 10,000 calls spread evenly over 100 tenants, with tokens that live
//!    5 minutes and are replaced 1 minute early, during 10 minutes — on a
//!    clock 75 times faster (tokens of 4 s, replaced 0.8 s early, over 8 s),
//!    since the token lifetime is the provider's. Printed beside what the
//!    lifetimes say it should cost (every tenant's first token, then one per
//!    refresh interval) and beside a client that fetches a token per call.
//! 2. A warm OAuth token (held, sealed, opened for the call) against a
//!    static credential's lease (the grant material's lease is that same
//!    lease): the difference is what OAuth adds to a call.

use std::sync::Arc;
use std::time::{Duration, Instant};
use valet::config::{AuthConfig, ClientAuthConfig, Config, GrantConfig, VendorConfig};
use valet_credentials::{
    CredentialKey, Fingerprint, LeaseAudit, LeaseEvent, LocalStore, MasterKey, Secret, Vault,
};
use valet_oauth::{Fetch, Grants, TokenError, Tokens};
use valet_testkit::MockOAuth;
use valet_testkit::oauth_provider::ClientAuth;

const TENANTS: usize = 100;
const CALLS: usize = 10_000;
/// Simulated time runs this much faster than the provider's clock.
const SPEED: u32 = 75;
const LIFETIME: Duration = Duration::from_secs(300);
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
const SPAN: Duration = Duration::from_secs(600);

/// Audit is measured elsewhere (benches/proxy.rs pays the fsync).
struct NoAudit;

impl LeaseAudit for NoAudit {
    async fn record_lease(&self, _event: &LeaseEvent<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// The vault, unaudited.
struct BenchGrants(Vault);

impl Grants for BenchGrants {
    async fn current(&self, key: &CredentialKey) -> Result<(Secret, Fingerprint), TokenError> {
        let lease = self
            .0
            .lease(key, "bench", "bench", "", &NoAudit)
            .await
            .map_err(|e| TokenError::Store(e.to_string()))?;
        Ok((lease.secret().clone(), lease.fingerprint().clone()))
    }
    async fn replace(&self, key: &CredentialKey, material: &Secret) -> Result<Fingerprint, TokenError> {
        let (stored, _) = self
            .0
            .put(key, material)
            .await
            .map_err(|e| TokenError::Store(e.to_string()))?;
        Ok(stored.fingerprint)
    }
    async fn record(&self, _fetch: &Fetch<'_>) -> Result<(), TokenError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let idp = MockOAuth::start().await;
    idp.set_lifetime((LIFETIME / SPEED).as_secs());
    let mut vendor = VendorConfig::new(
        "crm",
        idp.api_url(),
        AuthConfig::OAuth2 {
            token_url: idp.token_url(),
            grant: GrantConfig::ClientCredentials,
            client_auth: ClientAuthConfig::ClientSecretBasic,
            scopes: vec!["things".into()],
            read_scopes: Vec::new(),
            write_scopes: Vec::new(),
            audience: None,
            revocation_url: None,
            refresh_before_ms: (REFRESH_BEFORE / SPEED).as_millis() as u64,
            mtls: false,
        },
    );
    vendor.allow_insecure_http = true;
    let config = Config {
        vendors: vec![vendor],
        ..Config::default()
    }
    .validate()
    .expect("config");
    let vendor = config.registry().get("crm").expect("vendor").clone();

    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::new(
        Arc::new(MasterKey::generate()),
        Arc::new(LocalStore::open(dir.path()).expect("store")),
    );
    let keys: Vec<CredentialKey> = (0..TENANTS)
        .map(|t| CredentialKey::new(format!("tenant-{t}"), "crm"))
        .collect();
    let mut grants = Vec::new();
    for key in &keys {
        let secret = format!("secret-for-{}", key.tenant);
        idp.add_client(&key.tenant, &secret, ClientAuth::Basic);
        let material = serde_json::json!({"client_id": key.tenant, "client_secret": secret}).to_string();
        let (stored, _) = vault.put(key, &Secret::from(material)).await.unwrap();
        grants.push(stored.fingerprint);
    }
    let tokens = Arc::new(Tokens::new(
        vault.clone(),
        BenchGrants(vault.clone()),
        valet_telemetry::Metrics::default(),
    ));

    // 1. Token requests over the span.
    let span = SPAN / SPEED;
    let step = span / CALLS as u32;
    let started = tokio::time::Instant::now();
    for i in 0..CALLS {
        tokio::time::sleep_until(started + step * i as u32).await;
        let t = i % TENANTS;
        tokens
            .access_token(&vendor, &keys[t], false, &grants[t])
            .await
            .expect("token");
    }
    // Background refreshes started near the end finish.
    let settled = idp.token_requests().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = idp.token_requests().len().max(settled);
    // Each tenant: its first token, then one per refresh interval that ends
    // within the span (the interval is lifetime - refresh_before, less a
    // jitter of up to a tenth of the lifetime: 3.5 to 4 minutes here).
    let intervals =
        |jitter: f64| (SPAN.as_secs_f64() / ((LIFETIME - REFRESH_BEFORE).as_secs_f64() - jitter)).floor();
    let expected = TENANTS as f64 * (1.0 + intervals(LIFETIME.as_secs_f64() / 20.0));
    println!(
        "token requests for {CALLS} calls, {TENANTS} tenants, {} min of {} min tokens replaced {} s early:",
        SPAN.as_secs() / 60,
        LIFETIME.as_secs() / 60,
        REFRESH_BEFORE.as_secs()
    );
    println!("  Valet:                         {requests:>6}");
    println!("  tenants x (1 + whole refresh intervals in the span): {expected:>6.0}");
    println!(
        "  ratio Valet / expected:        {:>6.2}",
        requests as f64 / expected
    );
    println!("  a token request per call:      {CALLS:>6}");

    // 2. The warm path, in interleaved rounds.
    let key = &keys[0];
    let per_round = 40_000u32;
    let (mut leases, mut held) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let lease = time(per_round, || async {
            vault.lease(key, "bench", "bench", "req", &NoAudit).await.unwrap();
        })
        .await;
        let token = time(per_round, || async {
            tokens
                .access_token(&vendor, key, false, &grants[0])
                .await
                .unwrap();
        })
        .await;
        // The first round warms up.
        if round > 0 {
            leases.push(lease);
            held.push(token);
        }
    }
    let (lease, token) = (median(leases), median(held));
    println!("warm path, median of 5 interleaved rounds of {per_round}:");
    println!("  static credential lease:       {lease:>6.0} ns");
    println!("  OAuth: lease + held token:     {:>6.0} ns", lease + token);
    println!("  added by OAuth:                {token:>6.0} ns");
}

/// Mean ns per run of `one` over `iterations`.
async fn time<F, Fut>(iterations: u32, mut one: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for _ in 0..iterations {
        one().await;
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
