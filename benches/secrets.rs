//! Secrets Manager cost of Valet's credential cache, and the price of a warm
//! lease. Run: `cargo bench --bench secrets` (needs moto: `scripts/test`
//! installs it).
//!
//! 1. 10,000 leases spread over 100 tenants during 10 minutes of simulated
//!    time (the cache's clock is driven; Secrets Manager is the real moto
//!    emulator behind a counting proxy), with the default 300 s TTL. Printed
//!    as Secrets Manager requests per 10,000 calls, beside what a client
//!    without a cache would send (one GetSecretValue per call).
//! 2. A warm lease — cache hit, HKDF tenant key, AES-256-GCM decrypt — in ns,
//!    against a cache hit alone, so the difference is what decryption adds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use valet_credentials::aws::{AwsConnection, AwsStore, sdk_config};
use valet_credentials::cache::CacheSettings;
use valet_credentials::{CredentialKey, LeaseAudit, LeaseEvent, MasterKey, Secret, SecretStore, Vault};
use valet_testkit::{CountingProxy, Moto};

/// Audit is measured elsewhere (benches/proxy.rs pays the fsync).
struct NoAudit;

impl LeaseAudit for NoAudit {
    async fn record_lease(&self, _event: &LeaseEvent<'_>) -> Result<(), String> {
        Ok(())
    }
}

const TENANTS: usize = 100;
const CALLS: usize = 10_000;
const SIMULATED: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let moto = Moto::start().await;
    let proxy = CountingProxy::start(&moto.endpoint()).await;
    let sdk = sdk_config(&AwsConnection {
        region: "us-east-1".into(),
        endpoint_url: Some(proxy.endpoint()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await;
    let master = Arc::new(MasterKey::generate());
    let keys: Vec<CredentialKey> = (0..TENANTS)
        .map(|t| CredentialKey::new(format!("tenant-{t}"), "vendor"))
        .collect();

    // Seed through one store, then measure through a fresh one: a cold cache.
    let seed = Vault::new(
        master.clone(),
        Arc::new(AwsStore::new(&sdk, "bench", CacheSettings::default())),
    );
    for key in &keys {
        seed.put(key, &Secret::from(format!("token-for-{}-0123456789", key.tenant)))
            .await
            .unwrap();
    }
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let store = Arc::new(AwsStore::with_clock(
        &sdk,
        "bench",
        CacheSettings::default(),
        Arc::new(move || *clock.lock().unwrap()),
    ));
    let vault = Vault::new(master, store.clone());
    proxy.reset();

    let step = SIMULATED / CALLS as u32;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..CALLS {
        *now.lock().unwrap() += step;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = &keys[(rng % TENANTS as u64) as usize];
        vault.lease(key, "bench", "bench", "req", &NoAudit).await.unwrap();
    }
    let (gets, describes) = (proxy.count("GetSecretValue"), proxy.count("DescribeSecret"));
    println!(
        "Secrets Manager requests for {CALLS} calls, {TENANTS} tenants, {} s simulated, TTL 300 s:",
        SIMULATED.as_secs()
    );
    println!(
        "  Valet (ciphertext cache):   {:>6} ({gets} GetSecretValue + {describes} DescribeSecret)",
        gets + describes
    );
    println!("  no cache:                   {CALLS:>6} (one GetSecretValue per call)");
    println!(
        "  ratio Valet/no cache:       {:.4}",
        (gets + describes) as f64 / CALLS as f64
    );

    // Warm path: a cache hit, then a full lease (hit + decrypt).
    let key = &keys[0];
    let iterations = 200_000u32;
    let hit = time(iterations, || async {
        store.get(key).await.unwrap();
    })
    .await;
    let lease = time(iterations, || async {
        vault.lease(key, "bench", "bench", "req", &NoAudit).await.unwrap();
    })
    .await;
    println!("warm path, {iterations} iterations:");
    println!("  cache hit alone:            {hit:>6.0} ns");
    println!("  lease (hit + HKDF + AES-GCM decrypt): {lease:>6.0} ns");
    println!("  added by decryption:        {:>6.0} ns", lease - hit);
}

async fn time<F, Fut>(iterations: u32, mut one: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..1_000 {
        one().await;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        one().await;
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}
