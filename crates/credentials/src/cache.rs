//! The ciphertext cache in front of a remote secret store.
//!
//! Only sealed records are cached — AWS's own caching client keeps
//! plaintext; this one never sees it. An entry is fresh for `ttl`; after
//! that the next `get` asks the source for the current version id (a cheap
//! DescribeSecret) and fetches the value (GetSecretValue) only if the version
//! changed. One refresh per key runs at a time (single-flight): concurrent
//! callers wait for it instead of sending their own requests. When the source
//! is unreachable, an entry confirmed within `max_stale` is served stale;
//! after that the call fails rather than inject something unverified.
//! Missing credentials are cached too, so a caller retrying a tenant without
//! one does not hammer the source. At most `capacity` keys are kept; the
//! least recently used is evicted.

use crate::key::CredentialKey;
use crate::store::{StoreError, StoredCredential};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use valet_telemetry::{CacheLookup, Metrics};

/// Where the cache's clock comes from; tests and benchmarks drive it.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long an entry is served without a version check.
    pub ttl: Duration,
    /// How long past its last confirmation an entry may be served while the
    /// source is unavailable.
    pub max_stale: Duration,
    /// Most keys kept.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            capacity: 10_000,
        }
    }
}

/// Why the source could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Unreachable, throttling, failing: a cached record may be served stale.
    Unavailable(String),
    /// It answered with something that is not a Valet sealed record: never
    /// papered over with a stale one.
    Corrupt(String),
}

/// What the source answers about a key's current version.
pub trait Source: Send + Sync {
    /// The current version id, `None` if the credential does not exist.
    fn version(
        &self,
        key: &CredentialKey,
    ) -> impl Future<Output = Result<Option<String>, SourceError>> + Send;
    /// The current version id and record, `None` if it does not exist.
    fn fetch(
        &self,
        key: &CredentialKey,
    ) -> impl Future<Output = Result<Option<(String, StoredCredential)>, SourceError>> + Send;
}

/// A cached answer: the record (or its absence) at a version.
#[derive(Debug, Clone)]
struct Cached {
    /// `None`: the source said there is no such credential.
    cred: Option<StoredCredential>,
    version: Option<String>,
    /// When the source last confirmed this answer.
    confirmed: Instant,
    /// After a failed refresh, the stale answer is served without asking the
    /// source again until then, so an outage costs one request per key per
    /// backoff, not one per call.
    retry_at: Option<Instant>,
}

/// How long a key whose refresh failed is served stale before the source is
/// asked again.
const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    state: RwLock<Option<Cached>>,
    /// Held by the one refresh in progress for this key.
    refreshing: tokio::sync::Mutex<()>,
    /// Nanoseconds since the cache's epoch, for LRU eviction.
    last_used: AtomicU64,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct Cache {
    settings: CacheSettings,
    clock: Clock,
    epoch: Instant,
    entries: Mutex<HashMap<CredentialKey, Arc<Entry>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// An empty cache on the real clock.
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_clock(settings, Arc::new(Instant::now))
    }

    /// An empty cache on `clock`.
    pub fn with_clock(settings: CacheSettings, clock: Clock) -> Self {
        let epoch = clock();
        Self {
            settings,
            clock,
            epoch,
            entries: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
        }
    }

    /// The record for `key`, from cache when fresh, else from `source`.
    pub async fn get(
        &self,
        key: &CredentialKey,
        source: &impl Source,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let entry = self.entry(key);
        let now = (self.clock)();
        if let Some(hit) = self.fresh(&entry, now) {
            self.served(CacheLookup::Hit);
            return Ok(hit);
        }
        let _only_one = entry.refreshing.lock().await;
        let now = (self.clock)();
        if let Some(hit) = self.fresh(&entry, now) {
            self.served(CacheLookup::Hit);
            return Ok(hit); // refreshed while we waited
        }
        let cached = entry.state.read().expect("lock").clone();
        let (cred, stale) = self.refresh(key, &entry, cached, now, source).await?;
        self.served(if stale {
            CacheLookup::Stale
        } else {
            CacheLookup::Miss
        });
        Ok(cred)
    }

    /// Counts the lookup and names it on the current span (the lease's).
    fn served(&self, lookup: CacheLookup) {
        self.metrics.cache_lookup(lookup);
        tracing::Span::current().record("valet.cache", lookup.as_str());
    }

    /// Counts lookups in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Checks `key` with the source now, whatever its age; true if the
    /// current version differs from the cached one.
    pub async fn revalidate(&self, key: &CredentialKey, source: &impl Source) -> Result<bool, StoreError> {
        let entry = self.entry(key);
        let _only_one = entry.refreshing.lock().await;
        let before = entry
            .state
            .read()
            .expect("lock")
            .as_ref()
            .and_then(|c| c.version.clone());
        let now = (self.clock)();
        let cached = entry.state.read().expect("lock").clone();
        self.refresh(key, &entry, cached, now, source).await?;
        let after = entry
            .state
            .read()
            .expect("lock")
            .as_ref()
            .and_then(|c| c.version.clone());
        Ok(before != after)
    }

    /// Records what was just written through this process. A fresh entry
    /// replaces the old one, so a refresh already in flight (which writes into
    /// the entry it started with) cannot overwrite this newer answer.
    pub fn insert(&self, key: &CredentialKey, version: String, cred: StoredCredential) {
        let entry = Arc::new(Entry {
            state: RwLock::new(Some(Cached {
                cred: Some(cred),
                version: Some(version),
                confirmed: (self.clock)(),
                retry_at: None,
            })),
            refreshing: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(self.nanos()),
        });
        self.entries.lock().expect("lock").insert(key.clone(), entry);
    }

    /// Forgets `key`, so the next `get` asks the source.
    pub fn invalidate(&self, key: &CredentialKey) {
        self.entries.lock().expect("lock").remove(key);
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> Option<Option<StoredCredential>> {
        let state = entry.state.read().expect("lock");
        let cached = state.as_ref()?;
        let young = now.saturating_duration_since(cached.confirmed) < self.settings.ttl;
        let backing_off = cached.retry_at.is_some_and(|at| now < at);
        (young || backing_off).then(|| cached.cred.clone())
    }

    async fn refresh(
        &self,
        key: &CredentialKey,
        entry: &Entry,
        cached: Option<Cached>,
        now: Instant,
        source: &impl Source,
    ) -> Result<(Option<StoredCredential>, bool), StoreError> {
        let store = |cred: Option<StoredCredential>, version: Option<String>| {
            *entry.state.write().expect("lock") = Some(Cached {
                cred: cred.clone(),
                version,
                confirmed: now,
                retry_at: None,
            });
            cred
        };
        let outcome = match &cached {
            // Expired: a version check first; the value only if it changed.
            Some(old) => match source.version(key).await {
                Ok(v) if v == old.version => Ok(store(old.cred.clone(), v)),
                Ok(None) => Ok(store(None, None)),
                Ok(Some(_)) => source.fetch(key).await.map(|found| match found {
                    Some((v, cred)) => store(Some(cred), Some(v)),
                    None => store(None, None),
                }),
                Err(e) => Err(e),
            },
            None => source.fetch(key).await.map(|found| match found {
                Some((v, cred)) => store(Some(cred), Some(v)),
                None => store(None, None),
            }),
        };
        match (outcome, cached) {
            (Ok(cred), _) => Ok((cred, false)),
            (Err(SourceError::Corrupt(what)), _) => Err(StoreError::Corrupt { context: what }),
            (Err(SourceError::Unavailable(cause)), Some(old))
                if now.saturating_duration_since(old.confirmed) <= self.settings.max_stale =>
            {
                // Keep serving it without asking again for a while; never past
                // max_stale.
                let until_too_stale =
                    (old.confirmed + self.settings.max_stale).saturating_duration_since(now);
                if let Some(state) = entry.state.write().expect("lock").as_mut() {
                    state.retry_at = Some(now + FAILED_REFRESH_BACKOFF.min(until_too_stale));
                }
                tracing::warn!(
                    credential = %key,
                    %cause,
                    stale_for_ms = now.saturating_duration_since(old.confirmed).as_millis() as u64,
                    "secret store unavailable; serving the cached credential"
                );
                Ok((old.cred, true))
            }
            (Err(SourceError::Unavailable(cause)), _) => Err(StoreError::Unavailable(cause)),
        }
    }

    fn nanos(&self) -> u64 {
        (self.clock)().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn entry(&self, key: &CredentialKey) -> Arc<Entry> {
        let now = (self.clock)().saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut entries = self.entries.lock().expect("lock");
        if let Some(e) = entries.get(key) {
            e.last_used.store(now, Ordering::Relaxed);
            return e.clone();
        }
        if entries.len() >= self.settings.capacity {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        let entry = Arc::new(Entry {
            state: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(now),
        });
        entries.insert(key.clone(), entry.clone());
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::fingerprint::Fingerprint;
    use std::sync::atomic::AtomicUsize;

    /// A source with a version and a switch to make it fail; counts calls.
    #[derive(Default)]
    struct Fake {
        version: Mutex<Option<String>>,
        down: std::sync::atomic::AtomicBool,
        fetches: AtomicUsize,
        checks: AtomicUsize,
    }

    fn record(v: &str) -> StoredCredential {
        StoredCredential {
            envelope: Envelope {
                v: 1,
                kid: "k".into(),
                nonce: v.into(),
                ct: v.into(),
            },
            fingerprint: serde_json::from_str(&format!("\"{v}\""))
                .map(|f: Fingerprint| f)
                .unwrap(),
            last4: String::new(),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    impl Source for Fake {
        async fn version(&self, _key: &CredentialKey) -> Result<Option<String>, SourceError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable("down".into()));
            }
            Ok(self.version.lock().unwrap().clone())
        }
        async fn fetch(
            &self,
            _key: &CredentialKey,
        ) -> Result<Option<(String, StoredCredential)>, SourceError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable("down".into()));
            }
            Ok(self
                .version
                .lock()
                .unwrap()
                .clone()
                .map(|v| (v.clone(), record(&v))))
        }
    }

    struct ManualClock(Mutex<Instant>);
    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    fn setup() -> (Arc<Cache>, Arc<ManualClock>, Arc<Fake>) {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let c = clock.clone();
        let settings = CacheSettings {
            ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            capacity: 2,
        };
        let cache = Arc::new(Cache::with_clock(
            settings,
            Arc::new(move || *c.0.lock().unwrap()),
        ));
        let fake = Arc::new(Fake::default());
        *fake.version.lock().unwrap() = Some("v1".into());
        (cache, clock, fake)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_gets_fetch_once() {
        let (cache, _, fake) = setup();
        let key = CredentialKey::new("t", "v");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (cache, fake, key) = (cache.clone(), fake.clone(), key.clone());
                tokio::spawn(async move { cache.get(&key, &*fake).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().unwrap().is_some());
        }
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expiry_checks_the_version_before_fetching() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &*fake).await.unwrap();
        clock.advance(Duration::from_secs(301));
        cache.get(&key, &*fake).await.unwrap();
        assert_eq!(
            (
                fake.fetches.load(Ordering::SeqCst),
                fake.checks.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        // A new version outside: fetched at the next expiry.
        *fake.version.lock().unwrap() = Some("v2".into());
        clock.advance(Duration::from_secs(301));
        let got = cache.get(&key, &*fake).await.unwrap().unwrap();
        assert_eq!(got.envelope.ct, "v2");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stale_if_error_then_unavailable() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &*fake).await.unwrap();
        fake.down.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(1800));
        assert!(cache.get(&key, &*fake).await.unwrap().is_some(), "served stale");
        clock.advance(Duration::from_secs(1801));
        assert!(matches!(
            cache.get(&key, &*fake).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn revalidate_sees_an_outside_change_and_lru_bounds_size() {
        let (cache, _, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &*fake).await.unwrap();
        assert!(!cache.revalidate(&key, &*fake).await.unwrap());
        *fake.version.lock().unwrap() = Some("v2".into());
        assert!(cache.revalidate(&key, &*fake).await.unwrap());
        for t in ["a", "b", "c"] {
            cache.get(&CredentialKey::new(t, "v"), &*fake).await.unwrap();
        }
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
    }
}
