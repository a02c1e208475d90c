//! The audit writer: one OS thread owns the file and group-commits entries.
//!
//! Why a thread: fsync blocks, and it must not stall the async runtime that
//! serves calls. Why group commit: one fsync per batch instead of per entry
//! keeps the hot path cheap under concurrency, while each caller still only
//! proceeds once its own entry is durable.

use crate::event::Event;
use crate::{GENESIS, line_hash};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Most entries committed by one fsync.
const MAX_BATCH: usize = 1024;
/// How far from the end of the file `open` looks for the last entry.
const MAX_TAIL: u64 = 1 << 20;

/// Why an entry was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Opening or recovering the file failed.
    #[error("audit log {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing or syncing the batch failed; the entry is not in the log.
    #[error("audit write failed: {0}")]
    Write(String),
    /// The writer has stopped.
    #[error("audit writer stopped")]
    Closed,
}

struct Pending {
    actor: String,
    event: Event,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// A handle to the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Pending>,
    path: PathBuf,
    poisoned: Arc<AtomicBool>,
}

#[derive(Serialize)]
struct Entry<'a> {
    seq: u64,
    ts_ms: u64,
    prev: &'a str,
    actor: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

struct Writer {
    file: File,
    len: u64,
    seq: u64,
    prev: String,
    /// Set when a failed batch could not be cut off the file: appending more
    /// would chain onto a partial line, so every later write is refused.
    poisoned: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens (creating with mode 0600) the log at `path` and starts its writer
    /// thread. A partial last line — a write cut off by a crash before its
    /// fsync returned, so no caller was told it succeeded — is cut off.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let fail = |reason: String| AuditError::Open {
            path: path.to_owned(),
            reason,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make a newly created log's directory entry durable.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail(e.to_string()))?;
        }
        let writer = Writer::recover(&mut file).map_err(fail)?;
        let writer = Writer { file, ..writer };
        let poisoned = writer.poisoned.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("valet-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            tx,
            path: path.to_owned(),
            poisoned,
        })
    }

    /// Whether entries can still be written: the writer is running and has
    /// not refused further writes after a failure it could not roll back.
    pub fn writable(&self) -> bool {
        !self.tx.is_closed() && !self.poisoned.load(Ordering::Relaxed)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and waits until it is durable.
    pub async fn append(&self, actor: &str, event: Event) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                actor: actor.to_owned(),
                event,
                done,
            })
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }
}

impl Writer {
    /// Finds the last complete entry; truncates a partial tail.
    fn recover(file: &mut File) -> Result<Writer, String> {
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let start = len.saturating_sub(MAX_TAIL);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        file.take(len - start)
            .read_to_end(&mut tail)
            .map_err(|e| e.to_string())?;
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut len = len;
        if complete < tail.len() {
            len = start + complete as u64;
            tracing::warn!(
                kept_bytes = len,
                "audit log ended in a partial line; cutting it off"
            );
            file.set_len(len).map_err(|e| e.to_string())?;
        }
        let body = &tail[..complete];
        let last = body
            .strip_suffix(b"\n")
            .and_then(|b| b.rsplit(|c| *c == b'\n').next())
            .filter(|l| !l.is_empty());
        let (seq, prev) = match last {
            None => (0, GENESIS.to_owned()),
            Some(line) => {
                let value: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|_| "last entry is not JSON; run `valet audit verify`".to_owned())?;
                let seq = value["seq"]
                    .as_u64()
                    .ok_or("last entry has no seq; run `valet audit verify`")?;
                (seq, line_hash(line))
            }
        };
        Ok(Writer {
            file: file.try_clone().map_err(|e| e.to_string())?,
            len,
            seq,
            prev,
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            for p in batch {
                let _ = p.done.send(result.clone());
            }
        }
    }

    /// Writes and fsyncs a batch; on failure rolls the file and chain back so
    /// the next batch continues a valid chain.
    fn commit(&mut self, batch: &[Pending]) -> Result<(), AuditError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(AuditError::Write(
                "an earlier failed write could not be rolled back; restart to recover".into(),
            ));
        }
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let mut buf = Vec::with_capacity(256 * batch.len());
        for p in batch {
            seq += 1;
            let entry = Entry {
                seq,
                ts_ms,
                prev: &prev,
                actor: &p.actor,
                event: &p.event,
            };
            let line = serde_json::to_vec(&entry).expect("an entry serialises");
            prev = line_hash(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let written = self.file.write_all(&buf).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.seq = seq;
                self.prev = prev;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; refusing the batch");
                if self.file.set_len(self.len).is_err() && self.file.metadata().is_ok_and(|m| m.is_file()) {
                    tracing::error!("audit log could not be rolled back; refusing further writes");
                    self.poisoned.store(true, Ordering::Relaxed);
                }
                Err(AuditError::Write(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify;

    fn revoke(n: usize) -> Event {
        Event::ApiKeyRevoke {
            key_id: format!("key_{n}"),
            name: "n".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let log = log.clone();
                tokio::spawn(async move { log.append("tester", revoke(n)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(verify(&path).unwrap(), 200);

        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(200)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 201);
    }

    #[tokio::test]
    async fn a_partial_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(1)).await.unwrap();
        drop(log);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"ts_ms\":").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append("tester", revoke(2)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_not_swallowed() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        let err = log.append("tester", revoke(1)).await.unwrap_err();
        assert!(matches!(err, AuditError::Write(_)), "{err}");
    }
}
