//! The embedded default store: one JSON file per credential under the state
//! dir, `credentials/<tenant>/<vendor>.json`, mode 0600.
//!
//! Writes go to a temporary file that is fsync'd and renamed over the old
//! one, then the directory is fsync'd: a crash leaves the old or the new
//! credential, never half of one. Deletion overwrites the file's bytes with
//! zeros and fsyncs before unlinking. All records are read into memory at
//! open, so `get` is a map lookup.
//!
//! Rotation uses a pending slot, `<vendor>.json.pending`; promoting it keeps
//! the replaced credential as `<vendor>.json.previous` (like AWSPREVIOUS),
//! shredding the one before. A pending slot found at open belongs to a
//! rotation that never committed and is shredded.

use crate::key::{CredentialKey, valid_name};
use crate::store::{CredentialMeta, SecretStore, StoreError, StoreFuture, StoredCredential};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Sealed credentials in files, cached (still sealed) in memory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    records: RwLock<BTreeMap<CredentialKey, StoredCredential>>,
    /// Serialises file writes so two puts of one key cannot interleave.
    writes: tokio::sync::Mutex<()>,
}

impl LocalStore {
    /// Opens (creating if needed, mode 0700) the store in `dir` and loads
    /// every record.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        let mut records = BTreeMap::new();
        for tenant_entry in read_dir(dir)? {
            let tenant_dir = tenant_entry.path();
            let tenant = file_name(&tenant_dir);
            if !tenant_dir.is_dir() || valid_name(&tenant).is_err() {
                continue;
            }
            for entry in read_dir(&tenant_dir)? {
                let path = entry.path();
                let name = file_name(&path);
                if name.ends_with(".tmp") || name.ends_with(".pending") {
                    // A write interrupted by a crash, or a rotation that never
                    // committed: sealed, but not the current value. Destroy it
                    // like a deleted credential.
                    shred(&path)?;
                    continue;
                }
                let Some(vendor) = name.strip_suffix(".json") else {
                    continue;
                };
                if valid_name(vendor).is_err() {
                    continue;
                }
                let context = || path.display().to_string();
                let bytes = fs::read(&path).map_err(|source| StoreError::Io {
                    context: context(),
                    source,
                })?;
                let cred =
                    serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt { context: context() })?;
                records.insert(CredentialKey::new(tenant.clone(), vendor), cred);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                records: RwLock::new(records),
                writes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn path_of(&self, key: &CredentialKey) -> PathBuf {
        self.inner
            .dir
            .join(&key.tenant)
            .join(format!("{}.json", key.vendor))
    }

    fn slot(&self, key: &CredentialKey, suffix: &str) -> PathBuf {
        let mut path = self.path_of(key).into_os_string();
        path.push(suffix);
        PathBuf::from(path)
    }
}

impl SecretStore for LocalStore {
    fn get<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, Option<StoredCredential>> {
        let found = self.inner.records.read().expect("lock").get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _guard = self.inner.writes.lock().await;
            let path = self.path_of(key);
            let bytes = serde_json::to_vec_pretty(&cred).expect("a record serialises");
            blocking(move || write_atomically(&path, &bytes)).await?;
            self.inner
                .records
                .write()
                .expect("lock")
                .insert(key.clone(), cred);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let _guard = self.inner.writes.lock().await;
            let existed = self.inner.records.read().expect("lock").contains_key(key);
            if !existed {
                return Ok(false);
            }
            // Forget it in memory first: from here on no call can lease it,
            // even if the shredding below fails.
            self.inner.records.write().expect("lock").remove(key);
            let slots = [
                self.path_of(key),
                self.slot(key, ".previous"),
                self.slot(key, ".pending"),
            ];
            blocking(move || slots.iter().filter(|p| p.exists()).try_for_each(|p| shred(p))).await?;
            Ok(true)
        })
    }

    fn list<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<(CredentialKey, CredentialMeta)>> {
        let records = self.inner.records.read().expect("lock");
        let found = records
            .iter()
            .filter(|(k, _)| tenant.is_none_or(|t| k.tenant == t))
            .map(|(k, v)| (k.clone(), v.meta()))
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn refresh<'a>(&'a self, _key: &'a CredentialKey) -> StoreFuture<'a, bool> {
        // Only this process writes the files; nothing changes behind it.
        Box::pin(async { Ok(false) })
    }

    fn put_pending<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _guard = self.inner.writes.lock().await;
            let path = self.slot(key, ".pending");
            let bytes = serde_json::to_vec_pretty(&cred).expect("a record serialises");
            blocking(move || write_atomically(&path, &bytes)).await
        })
    }

    fn promote_pending<'a>(
        &'a self,
        key: &'a CredentialKey,
        expected: &'a crate::Fingerprint,
    ) -> StoreFuture<'a, StoredCredential> {
        Box::pin(async move {
            let _guard = self.inner.writes.lock().await;
            let (current, pending, previous) = (
                self.path_of(key),
                self.slot(key, ".pending"),
                self.slot(key, ".previous"),
            );
            let missing = key.to_string();
            let expected = expected.clone();
            let cred = blocking(move || {
                let bytes = match fs::read(&pending) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NoPending(missing));
                    }
                    Err(e) => return Err(io_err(&pending)(e)),
                };
                let cred: StoredCredential =
                    serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
                        context: pending.display().to_string(),
                    })?;
                if cred.fingerprint != expected {
                    return Err(StoreError::NoPending(missing));
                }
                // Each step leaves a consistent state if the next never runs:
                // previous saved, then current replaced, then pending shredded.
                if let Ok(old) = fs::read(&current) {
                    if previous.exists() {
                        shred(&previous)?;
                    }
                    write_atomically(&previous, &old)?;
                }
                write_atomically(&current, &bytes)?;
                shred(&pending)?;
                Ok(cred)
            })
            .await?;
            self.inner
                .records
                .write()
                .expect("lock")
                .insert(key.clone(), cred.clone());
            Ok(cred)
        })
    }

    fn discard_pending<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _guard = self.inner.writes.lock().await;
            let pending = self.slot(key, ".pending");
            let missing = key.to_string();
            blocking(move || {
                if !pending.exists() {
                    return Err(StoreError::NoPending(missing));
                }
                shred(&pending)
            })
            .await
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("store I/O task does not panic")
}

fn io_err(context: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        context: context.display().to_string(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    valet_durable::create_private_dir(dir).map_err(io_err(dir))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(io_err(dir))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    create_private_dir(path.parent().expect("a record path has a parent"))?;
    valet_durable::write_atomically(path, bytes).map_err(io_err(path))
}

fn shred(path: &Path) -> Result<(), StoreError> {
    valet_durable::shred(path).map_err(io_err(path))
}
