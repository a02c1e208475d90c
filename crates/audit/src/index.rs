//! The signed index of sealed segments (`<audit.log>.index`): for each,
//! its file, first and last seq and last entry's hash, under an HMAC-SHA256
//! keyed from the master key (`valet audit verify --config` checks it).
//!
//! What it adds to the chain: whole sealed segments cut from the end (the
//! newest sealed segments and the current one removed, the rest a valid
//! chain) show as listed segments that are missing, to anyone checking
//! with the key, without the anchor. What it does not: the current segment
//! is not listed (it changes with every entry: the anchor covers it), and
//! someone holding the master key can sign a new index — in the embedded
//! mode that key is in the same state dir, so there the index guards only
//! against edits by someone without read access to `master.key`.
//!
//! It is rewritten when a segment is sealed and after retention, each time
//! to a temporary file, synced, and renamed over the old one.

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// The key the index is signed with (derived from the master key).
#[derive(Clone)]
pub struct IndexKey(zeroize::Zeroizing<[u8; 32]>);

impl IndexKey {
    /// The key from its bytes.
    pub fn new(bytes: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    fn mac(&self, segments: &[Listed]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("HMAC takes any key length");
        mac.update(&serde_json::to_vec(segments).expect("an index serialises"));
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey([REDACTED])")
    }
}

/// One sealed segment as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// Its file name (in the log's directory).
    pub file: String,
    /// Its first entry's seq.
    pub first_seq: u64,
    /// Its last entry's seq.
    pub last_seq: u64,
    /// Its last entry's hash.
    pub last_hash: String,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    segments: Vec<Listed>,
    mac: String,
}

/// What checking the index found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexCheck {
    /// Every listed segment is there, as listed.
    Matched {
        /// Segments listed.
        segments: usize,
    },
    /// There is no index (no segment sealed yet, or a log from before it).
    Absent,
}

/// Why the index does not hold.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// It could not be read or written.
    #[error("audit index {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not an index.
    #[error("audit index {0}: not an index")]
    Malformed(String),
    /// Its MAC does not match: it was edited (or signed with another key).
    #[error(
        "audit index {0}: its MAC does not match: it was edited, or the master key is not the one it was signed with"
    )]
    Forged(String),
    /// A listed segment is missing or differs.
    #[error("sealed segment {file} (entries {first_seq} to {last_seq}) {what}")]
    Segment {
        /// The segment's file.
        file: String,
        /// Its first seq as listed.
        first_seq: u64,
        /// Its last seq as listed.
        last_seq: u64,
        /// What is wrong.
        what: String,
    },
}

/// Where the index of the log at `current` is.
pub fn index_path(current: &Path) -> PathBuf {
    let mut p = current.as_os_str().to_owned();
    p.push(".index");
    PathBuf::from(p)
}

/// Lists the sealed segments as they are on disk now, and writes the
/// index signed with `key`.
pub fn rebuild(current: &Path, key: &IndexKey) -> Result<usize, IndexError> {
    let io = |source| IndexError::Io {
        path: index_path(current).display().to_string(),
        source,
    };
    let mut segments = Vec::new();
    for (_, path) in crate::segment::sealed(current).map_err(io)? {
        let Some((first_seq, last_seq, last_hash)) = ends(&path).map_err(io)? else {
            continue;
        };
        segments.push(Listed {
            file: file_name(&path),
            first_seq,
            last_seq,
            last_hash,
        });
    }
    write(current, key, &segments).map_err(io)?;
    Ok(segments.len())
}

/// Checks the index of the log at `current` against the segments on disk.
/// Segments removed by retention since are not listed (it is rebuilt
/// after each run).
pub fn check(current: &Path, key: &IndexKey) -> Result<IndexCheck, IndexError> {
    let path = index_path(current);
    let shown = path.display().to_string();
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexCheck::Absent),
        Err(source) => return Err(IndexError::Io { path: shown, source }),
    };
    let signed: Signed = serde_json::from_slice(&text).map_err(|_| IndexError::Malformed(shown.clone()))?;
    if key.mac(&signed.segments) != signed.mac {
        return Err(IndexError::Forged(shown));
    }
    let dir = current.parent().unwrap_or(Path::new("."));
    // Retention may have removed entries after the index last listed them
    // (a crash between its rewrite and the index's): what the log's own
    // records removed is not missing.
    let removed = crate::verify::removed_by_records(current).map_err(|source| IndexError::Io {
        path: current.display().to_string(),
        source,
    })?;
    for listed in &signed.segments {
        let wrong = |what: &str| IndexError::Segment {
            file: listed.file.clone(),
            first_seq: listed.first_seq,
            last_seq: listed.last_seq,
            what: what.to_owned(),
        };
        let found = ends(&dir.join(&listed.file)).map_err(|source| IndexError::Io {
            path: listed.file.clone(),
            source,
        })?;
        let all_removed = || (listed.first_seq..=listed.last_seq).all(&removed);
        match found {
            None if all_removed() => {}
            None => return Err(wrong("is missing: it was deleted")),
            Some((_, last, hash))
                if (last != listed.last_seq || hash != listed.last_hash) && !removed(listed.last_seq) =>
            {
                return Err(wrong("does not end where the index says: it was cut or edited"));
            }
            Some(_) => {}
        }
    }
    Ok(IndexCheck::Matched {
        segments: signed.segments.len(),
    })
}

fn write(current: &Path, key: &IndexKey, segments: &[Listed]) -> std::io::Result<()> {
    let signed = Signed {
        segments: segments.to_vec(),
        mac: key.mac(segments),
    };
    let bytes = serde_json::to_vec_pretty(&signed).expect("an index serialises");
    valet_durable::write_atomically(&index_path(current), &bytes)
}

/// A segment's first seq, last seq and last entry's hash; `None` if the
/// file is gone or empty. Reads only its first and last lines.
fn ends(path: &Path) -> std::io::Result<Option<(u64, u64, String)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let first = crate::segment::first_line(&mut file)?;
    let Some(first_seq) = first.as_deref().and_then(crate::segment::seq_of) else {
        return Ok(None);
    };
    let Some(last) = crate::segment::last_line(&mut file)?.2 else {
        return Ok(None);
    };
    let last_seq = crate::segment::seq_of(&last).unwrap_or(0);
    Ok(Some((first_seq, last_seq, crate::line_hash(&last))))
}

/// Changes the index: built from disk if there is none yet; otherwise
/// read, checked, changed by `change` and signed again. An index that does
/// not verify is left as it is (so `verify` keeps reporting it) rather
/// than signed over.
pub fn update(
    current: &Path,
    key: &IndexKey,
    change: impl FnOnce(&mut Vec<Listed>),
) -> Result<(), IndexError> {
    let path = index_path(current);
    let shown = path.display().to_string();
    let io = |source| IndexError::Io {
        path: shown.clone(),
        source,
    };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return rebuild(current, key).map(|_| ()),
        Err(e) => return Err(io(e)),
    };
    let mut signed: Signed =
        serde_json::from_slice(&text).map_err(|_| IndexError::Malformed(shown.clone()))?;
    if key.mac(&signed.segments) != signed.mac {
        return Err(IndexError::Forged(shown));
    }
    change(&mut signed.segments);
    write(current, key, &signed.segments).map_err(io)
}

/// Lists the sealed segments newer than the index's last one: those a
/// crash kept the sync thread from listing. Earlier ones are never added
/// back, and an index that does not verify is left as it is.
pub fn catch_up(current: &Path, key: &IndexKey) -> Result<(), IndexError> {
    let io = |source| IndexError::Io {
        path: index_path(current).display().to_string(),
        source,
    };
    let sealed = crate::segment::sealed(current).map_err(io)?;
    let mut newer = Vec::new();
    update(current, key, |segments| {
        let last = segments.last().map_or(0, |l| l.last_seq);
        for (first, path) in &sealed {
            if *first > last
                && let Ok(Some(listed)) = listing(path)
            {
                newer.push(listed);
            }
        }
        segments.append(&mut newer);
    })
}

/// The listing of the sealed segment at `path` as it is on disk now.
pub fn listing(path: &Path) -> std::io::Result<Option<Listed>> {
    Ok(ends(path)?.map(|(first_seq, last_seq, last_hash)| Listed {
        file: file_name(path),
        first_seq,
        last_seq,
        last_hash,
    }))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Segmenting;
    use crate::{AuditLog, Durability, Event};

    fn key(byte: u8) -> IndexKey {
        IndexKey::new(zeroize::Zeroizing::new([byte; 32]))
    }

    async fn sealed_log(path: &Path) -> AuditLog {
        let segmenting = Segmenting {
            max_bytes: 400,
            max_age_ms: 0,
        };
        let log = AuditLog::open_indexed(path, Durability::BeforeSend, segmenting, Some(key(7))).unwrap();
        for n in 0..20 {
            let event = Event::ApiKeyRevoke {
                key_id: format!("key_{n}"),
                name: "n".into(),
            };
            log.append("tester", event).await.unwrap();
        }
        log
    }

    #[tokio::test]
    async fn the_index_lists_every_seal_and_catches_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = sealed_log(&path).await;
        drop(log);
        let sealed = crate::segment::sealed(&path).unwrap();
        assert!(sealed.len() >= 4);
        assert_eq!(
            check(&path, &key(7)).unwrap(),
            IndexCheck::Matched {
                segments: sealed.len()
            }
        );
        assert!(
            matches!(check(&path, &key(8)), Err(IndexError::Forged(_))),
            "another key"
        );

        // The tail cut: the current segment and the newest sealed one go.
        // What is left is a valid chain; the index says what is missing.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&sealed.last().unwrap().1).unwrap();
        assert!(crate::verify(&path).is_ok(), "the chain alone cannot tell");
        let err = check(&path, &key(7)).unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");

        // Editing the index to match is a forgery.
        let text = std::fs::read_to_string(index_path(&path)).unwrap();
        let mut signed: serde_json::Value = serde_json::from_str(&text).unwrap();
        signed["segments"].as_array_mut().unwrap().pop();
        std::fs::write(index_path(&path), signed.to_string()).unwrap();
        assert!(matches!(check(&path, &key(7)), Err(IndexError::Forged(_))));
    }

    #[tokio::test]
    async fn removals_the_index_has_not_caught_up_with_are_not_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(sealed_log(&path).await);
        // Retention through a handle without the key: its segments are
        // rewritten and deleted, the index is not (as after a crash
        // between the two).
        let log = AuditLog::open_with(&path, Durability::BeforeSend, Segmenting::default()).unwrap();
        let now = crate::log::now_ms() + 500 * 86_400_000;
        let expired = crate::retention::expire(&log, crate::retention::Retention::default(), now)
            .await
            .unwrap();
        assert!(!expired.deleted.is_empty());
        let checked = check(&path, &key(7));
        assert!(matches!(checked, Ok(IndexCheck::Matched { .. })), "{checked:?}");
    }

    #[tokio::test]
    async fn retention_keeps_the_index_true() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = sealed_log(&path).await;
        // 500 days on, the revokes (security, 400 days) of sealed segments go.
        let now = crate::log::now_ms() + 500 * 86_400_000;
        let expired = crate::retention::expire(&log, crate::retention::Retention::default(), now)
            .await
            .unwrap();
        assert!(!expired.deleted.is_empty());
        let sealed = crate::segment::sealed(&path).unwrap();
        assert_eq!(
            check(&path, &key(7)).unwrap(),
            IndexCheck::Matched {
                segments: sealed.len()
            }
        );
        assert!(crate::verify(&path).is_ok());
    }
}
