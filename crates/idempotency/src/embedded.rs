//! Records in a redb database (`idempotency.redb` under the state dir).
//!
//! Why redb: a pure-Rust, well-kept embedded database with ACID write
//! transactions that fsync on commit — exactly what a record that must
//! survive `kill -9` between "in flight" and "completed" needs — with no C
//! library to build (SQLite would bring one).
//!
//! Concurrent transitions are group-committed (`group.rs`): one
//! transaction, one fsync, for every change queued meanwhile. redb's page
//! cache is bounded at [`CACHE_BYTES`] (its default, 1 GiB, let a process
//! under sustained writes grow by hundreds of MiB).

use crate::group::{Group, Table};
use crate::{Begin, Record, Scope, State, StoreError, Terms, decide, unsettled_expiry_ms};
use base64::Engine as _;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// redb's page cache: records are small and read once or twice each.
pub const CACHE_BYTES: usize = 16 << 20;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<Database>,
    group: Arc<Group>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedded")
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Embedded {
    /// Opens (creating) the database at `path`. Records left `in_flight` by a
    /// process that died become `unknown`: whether their request reached the
    /// vendor cannot be known. They are kept for `retention_ms` after their
    /// new lease.
    pub fn open(path: &Path, now_ms: u64, lease_ms: u64, retention_ms: u64) -> Result<Self, StoreError> {
        // redb creates its file with the umask's mode; records are sealed,
        // but no state file of Valet's is readable by others.
        let file = valet_durable::open_private(path).map_err(err)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_file(file)
            .map_err(err)?;
        let store = Self {
            db: Arc::new(db),
            group: Arc::default(),
        };
        // Nothing else uses the store yet: one transaction of its own.
        let txn = store.db.begin_write().map_err(err)?;
        {
            let table = &mut txn.open_table(RECORDS).map_err(err)?;
            let mut lost = Vec::new();
            for entry in table.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                if let Ok(mut record) = serde_json::from_slice::<Record>(v.value())
                    && matches!(record.state, State::InFlight { .. })
                {
                    let lease_until_ms = now_ms + lease_ms;
                    record.state = State::Unknown { lease_until_ms };
                    record.expires_ms = record
                        .expires_ms
                        .max(unsettled_expiry_ms(lease_until_ms, retention_ms));
                    lost.push((k.value().to_owned(), record));
                }
            }
            for (k, record) in lost {
                put(table, &k, &record)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(store)
    }

    /// Applies `f` in a committed transaction, shared with the changes of
    /// concurrent callers; returns once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Table<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.group.write(&self.db, RECORDS, f).await
    }

    /// Atomically decides what the call may do and, if it may proceed,
    /// records the key `in_flight`.
    pub async fn begin(&self, scope: &Scope, fingerprint: &str, terms: &Terms) -> Result<Begin, StoreError> {
        let (key, fingerprint, terms) = (scope.storage_key(), fingerprint.to_owned(), *terms);
        self.write(move |table| {
            let existing = get(table, &key)?;
            let decision = decide(existing.as_ref(), &fingerprint, &terms);
            if decision == Begin::Proceed {
                let lease_until_ms = terms.now_ms + terms.lease_ms;
                let record = Record {
                    fingerprint,
                    state: State::InFlight { lease_until_ms },
                    expires_ms: unsettled_expiry_ms(lease_until_ms, terms.retention_ms),
                };
                put(table, &key, &record)?;
            }
            Ok(decision)
        })
        .await
    }

    /// The vendor answered: keep its sealed response for replays.
    pub async fn complete(
        &self,
        scope: &Scope,
        sealed: &[u8],
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        let sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
        self.transition(scope, move |record| {
            record.state = State::Completed { sealed };
            record.expires_ms = now_ms + retention_ms;
        })
        .await
    }

    /// The outcome is unknown: refuse retries until `lease_until_ms`, and
    /// keep the record a retention beyond it.
    pub async fn mark_unknown(
        &self,
        scope: &Scope,
        lease_until_ms: u64,
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        self.transition(scope, move |record| {
            record.state = State::Unknown { lease_until_ms };
            record.expires_ms = record
                .expires_ms
                .max(unsettled_expiry_ms(lease_until_ms, retention_ms));
        })
        .await
    }

    /// The request never reached the vendor: forget the key, so a retry with
    /// it proceeds.
    pub async fn abandon(&self, scope: &Scope) -> Result<(), StoreError> {
        let key = scope.storage_key();
        self.write(move |table| {
            table.remove(key.as_str()).map_err(err)?;
            Ok(())
        })
        .await
    }

    /// Removes every record expired at `now_ms`; returns how many.
    pub async fn purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.purge(move |_, r| r.expires_ms <= now_ms).await
    }

    /// Removes every record of `tenant` (offboarding); returns how many.
    pub async fn purge_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        let prefix = format!("{tenant}\u{1f}");
        self.purge(move |k, _| k.starts_with(&prefix)).await
    }

    async fn purge(
        &self,
        doomed: impl Fn(&str, &Record) -> bool + Send + 'static,
    ) -> Result<usize, StoreError> {
        self.write(move |table| {
            let mut gone = Vec::new();
            for entry in table.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let record = serde_json::from_slice::<Record>(v.value());
                if record.is_ok_and(|r| doomed(k.value(), &r)) {
                    gone.push(k.value().to_owned());
                }
            }
            for k in &gone {
                table.remove(k.as_str()).map_err(err)?;
            }
            Ok(gone.len())
        })
        .await
    }

    async fn transition(
        &self,
        scope: &Scope,
        change: impl FnOnce(&mut Record) + Send + 'static,
    ) -> Result<(), StoreError> {
        let key = scope.storage_key();
        self.write(move |table| {
            let Some(mut record) = get(table, &key)? else {
                return Ok(()); // purged meanwhile: nothing to update
            };
            change(&mut record);
            put(table, &key, &record)
        })
        .await
    }
}

fn get(table: &Table<'_>, key: &str) -> Result<Option<Record>, StoreError> {
    match table.get(key).map_err(err)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|_| StoreError(format!("record for {key:?} is corrupt"))),
    }
}

fn put(table: &mut Table<'_>, key: &str, record: &Record) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).expect("a record serialises");
    table.insert(key, bytes.as_slice()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(now_ms: u64) -> Terms {
        Terms {
            now_ms,
            lease_ms: 1_000,
            retention_ms: 10_000,
            vendor_dedupes: false,
        }
    }

    fn scope(tenant: &str) -> Scope {
        Scope {
            tenant: tenant.into(),
            vendor: "v".into(),
            key: "k1".into(),
        }
    }

    #[tokio::test]
    async fn lifecycle_scoping_restart_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let store = Embedded::open(&path, 0, 1_000, 10_000).unwrap();
        assert_eq!(
            store.begin(&scope("a"), "f", &terms(0)).await.unwrap(),
            Begin::Proceed
        );
        assert!(matches!(
            store.begin(&scope("a"), "f", &terms(1)).await.unwrap(),
            Begin::InFlight(_)
        ));
        // Another tenant's identical key is its own record.
        assert_eq!(
            store.begin(&scope("b"), "f", &terms(1)).await.unwrap(),
            Begin::Proceed
        );
        store.complete(&scope("a"), b"sealed", 2, 10_000).await.unwrap();
        assert_eq!(
            store.begin(&scope("a"), "f", &terms(3)).await.unwrap(),
            Begin::Replay(b"sealed".to_vec())
        );
        assert_eq!(
            store.begin(&scope("a"), "g", &terms(3)).await.unwrap(),
            Begin::Reused
        );

        // Reopened: completed kept, in-flight (b) now unknown.
        drop(store);
        let store = Embedded::open(&path, 5, 1_000, 10_000).unwrap();
        assert_eq!(
            store.begin(&scope("a"), "f", &terms(6)).await.unwrap(),
            Begin::Replay(b"sealed".to_vec())
        );
        assert!(matches!(
            store.begin(&scope("b"), "f", &terms(6)).await.unwrap(),
            Begin::Unknown(Some(_))
        ));

        // Abandoned keys free up; purges remove.
        store.abandon(&scope("b")).await.unwrap();
        assert_eq!(
            store.begin(&scope("b"), "f", &terms(7)).await.unwrap(),
            Begin::Proceed
        );
        assert_eq!(store.purge_tenant("b").await.unwrap(), 1);
        assert_eq!(store.purge_expired(50_000).await.unwrap(), 1);
        assert_eq!(
            store.begin(&scope("a"), "f", &terms(50_001)).await.unwrap(),
            Begin::Proceed
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_each_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let store = Embedded::open(&path, 0, 1_000, 10_000).unwrap();
        let scope = |i: usize| Scope {
            tenant: "t".into(),
            vendor: "v".into(),
            key: format!("k{i}"),
        };
        let calls: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    assert_eq!(
                        store.begin(&scope(i), "f", &terms(0)).await.unwrap(),
                        Begin::Proceed
                    );
                    if i % 2 == 0 {
                        store.complete(&scope(i), b"sealed", 1, 10_000).await.unwrap();
                    }
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        // Every change is on disk: reopened, the completed ones replay and
        // the rest were in flight (now unknown).
        drop(store);
        let store = Embedded::open(&path, 5, 1_000, 10_000).unwrap();
        for i in 0..300 {
            let begin = store.begin(&scope(i), "f", &terms(6)).await.unwrap();
            match i % 2 {
                0 => assert_eq!(begin, Begin::Replay(b"sealed".to_vec()), "k{i}"),
                _ => assert!(matches!(begin, Begin::Unknown(Some(_))), "k{i}: {begin:?}"),
            }
        }
    }
}
