//! `cargo bench -p valet-credentials --bench cache`: what one lookup in the
//! ciphertext cache costs when it hits, and when it misses on a full cache
//! (the miss evicts a key), at the default capacity of 10,000 keys.
//!
//! The source answers at once, so the numbers are the cache's own work: the
//! map, the eviction and the single-flight bookkeeping. Rounds are
//! interleaved; each row prints its median and spread over the rounds.

use std::sync::Arc;
use std::time::Instant;
use valet_credentials::cache::{Cache, CacheSettings, Source, SourceError};
use valet_credentials::{CredentialKey, Envelope, Fingerprint, StoredCredential};

const CAPACITY: usize = 10_000;
const LOOKUPS: usize = 20_000;
const ROUNDS: usize = 7;

/// A source that has every credential at version "v1".
struct Instant1;

fn record() -> StoredCredential {
    StoredCredential {
        envelope: Envelope {
            v: 1,
            kid: "k".into(),
            nonce: "n".into(),
            ct: "c".into(),
        },
        fingerprint: Fingerprint::from_hex("00"),
        last4: String::new(),
        created_ms: 0,
        updated_ms: 0,
    }
}

impl Source for Instant1 {
    async fn version(&self, _key: &CredentialKey) -> Result<Option<String>, SourceError> {
        Ok(Some("v1".into()))
    }
    async fn fetch(&self, _key: &CredentialKey) -> Result<Option<(String, StoredCredential)>, SourceError> {
        Ok(Some(("v1".into(), record())))
    }
}

fn keys(prefix: &str, n: usize) -> Vec<CredentialKey> {
    (0..n)
        .map(|i| CredentialKey::new(format!("{prefix}{i}"), "acme"))
        .collect()
}

/// A full cache of `CAPACITY` keys named `warm…`.
async fn full_cache(source: &Arc<Instant1>) -> (Cache, Vec<CredentialKey>) {
    let cache = Cache::new(CacheSettings {
        capacity: CAPACITY,
        ..CacheSettings::default()
    });
    let warm = keys("warm", CAPACITY);
    for key in &warm {
        cache.get(key, source).await.expect("warm");
    }
    (cache, warm)
}

/// Nanoseconds per lookup over `lookups`.
async fn time(cache: &Cache, source: &Arc<Instant1>, lookups: &[CredentialKey]) -> f64 {
    let began = Instant::now();
    for key in lookups {
        cache.get(key, source).await.expect("get");
    }
    began.elapsed().as_nanos() as f64 / lookups.len() as f64
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>9.0} ns  (min {:.0}, max {:.0})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let source = Arc::new(Instant1);
        let (mut hits, mut misses) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (cache, warm) = full_cache(&source).await;
            // Hits: the warm keys in a scattered order.
            let order: Vec<_> = (0..LOOKUPS)
                .map(|i| warm[(i * 7919) % CAPACITY].clone())
                .collect();
            hits.push(time(&cache, &source, &order).await);
            // Misses on the full cache: every lookup is a new key and evicts one.
            let fresh = keys(&format!("new{round}-"), LOOKUPS);
            misses.push(time(&cache, &source, &fresh).await);
        }
        println!("credential cache, {CAPACITY} keys, {LOOKUPS} lookups a round, {ROUNDS} rounds");
        println!("  hit               {}", summary(hits));
        println!("  miss, full cache  {}", summary(misses));
    });
}
