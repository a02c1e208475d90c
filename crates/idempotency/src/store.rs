//! One face for both stores, so the call path does not care which it has.

use crate::{Begin, Embedded, Scope, Shared, StoreError, Terms};

/// The configured store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded redb (one replica).
    Embedded(Embedded),
    /// Redis (a fleet).
    Shared(Shared),
}

impl Store {
    /// Whether the backend answers: always for the embedded store, a PING
    /// for Redis.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Shared(redis) => redis.probe().await,
        }
    }

    /// Claims the key or says what the call may do instead.
    pub async fn begin(&self, scope: &Scope, fingerprint: &str, terms: &Terms) -> Result<Begin, StoreError> {
        match self {
            Store::Embedded(db) => db.begin(scope, fingerprint, terms).await,
            Store::Shared(redis) => redis.begin(scope, fingerprint, terms).await,
        }
    }

    /// Stores the vendor's sealed answer.
    pub async fn complete(
        &self,
        scope: &Scope,
        sealed: Vec<u8>,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(db) => db.complete(scope, &sealed, now_ms, retention_ms).await,
            Store::Shared(redis) => redis.complete(scope, &sealed, now_ms, retention_ms).await,
        }
    }

    /// Marks the outcome unknown until `lease_until_ms`; the record is kept
    /// `retention_ms` beyond that.
    pub async fn mark_unknown(
        &self,
        scope: &Scope,
        lease_until_ms: u64,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(db) => db.mark_unknown(scope, lease_until_ms, retention_ms).await,
            Store::Shared(redis) => {
                redis
                    .mark_unknown(scope, lease_until_ms, now_ms, retention_ms)
                    .await
            }
        }
    }

    /// Frees the key: the request never reached the vendor.
    pub async fn abandon(&self, scope: &Scope) -> Result<(), StoreError> {
        match self {
            Store::Embedded(db) => db.abandon(scope).await,
            Store::Shared(redis) => redis.abandon(scope).await,
        }
    }

    /// Removes every record of `tenant` (offboarding); returns how many.
    pub async fn purge_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(db) => db.purge_tenant(tenant).await,
            Store::Shared(redis) => redis.purge_tenant(tenant).await,
        }
    }

    /// Removes expired records (Redis expires them itself).
    pub async fn purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(db) => db.purge_expired(now_ms).await,
            Store::Shared(_) => Ok(0),
        }
    }
}
