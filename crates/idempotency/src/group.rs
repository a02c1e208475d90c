//! Group commit for the embedded store: concurrent transitions share one
//! redb write transaction, and so one fsync.
//!
//! redb runs one write transaction at a time, each fsync'd on commit; with
//! a transaction per transition, WRITE calls queued behind each other's
//! fsyncs (two per call). Here a caller queues its change and awaits its
//! result; if no commit is running, it starts one on the blocking pool,
//! which takes every queued change, applies them in order in one
//! transaction, commits, tells each caller, and goes on with whatever was
//! queued meanwhile until nothing is (the way LevelDB's writers do). No
//! caller is told its change is done before the commit holding it is
//! durable, and a waiting caller holds no thread: only the commit does.

use crate::StoreError;
use redb::Database;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::oneshot;

/// The table every change works on.
pub(crate) type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// The table's definition.
type Definition = redb::TableDefinition<'static, &'static str, &'static [u8]>;

/// A change: applied inside the group's transaction, it returns what to
/// tell its caller once the commit's outcome is known. Given the error
/// instead (no transaction could be opened), it tells its caller at once.
type Change = Box<dyn FnOnce(Result<&mut Table<'_>, &StoreError>) -> Option<Reply> + Send>;
type Reply = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// Most changes in one transaction.
const MAX_GROUP: usize = 256;

#[derive(Default)]
pub(crate) struct Group {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    changes: Vec<Change>,
    /// A commit loop is running (it takes what is queued).
    committing: bool,
}

impl Group {
    /// Applies `f` in a committed transaction (shared with whatever else
    /// is queued) and returns its result once that commit is durable.
    pub(crate) async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        db: &Arc<Database>,
        table: Definition,
        f: impl FnOnce(&mut Table<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let change: Change = Box::new(move |t: Result<&mut Table<'_>, &StoreError>| {
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(Err(StoreError(e.0.clone())));
                    return None;
                }
            };
            let out = f(t);
            Some(Box::new(move |committed: &Result<(), StoreError>| {
                let _ = tx.send(match committed {
                    Ok(()) => out,
                    Err(e) => Err(StoreError(e.0.clone())),
                });
            }))
        });
        let start = {
            let mut queue = self.lock();
            queue.changes.push(change);
            !std::mem::replace(&mut queue.committing, true)
        };
        if start {
            // Off the runtime's workers: a commit blocks on its fsync. The
            // loop holds the database only while it commits, so a store
            // dropped after its last answer is closed (and can be reopened).
            let (group, db) = (self.clone(), Arc::downgrade(db));
            tokio::task::spawn_blocking(move || group.commit_queued(&db, table));
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError("the idempotency commit was abandoned".into())))
    }

    /// Commits what is queued, a group at a time, until nothing is.
    fn commit_queued(&self, db: &Weak<Database>, table: Definition) {
        // Should a commit panic, the queue is not left marked as committing
        // (every later change would wait forever); what is queued is refused.
        struct Running<'g>(&'g Group);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut queue = self.0.lock();
                    queue.committing = false;
                    let left = std::mem::take(&mut queue.changes);
                    drop(queue);
                    refuse(left, &StoreError("an idempotency commit failed".into()));
                }
            }
        }
        let _running = Running(self);
        loop {
            let group: Vec<Change> = {
                let mut queue = self.lock();
                if queue.changes.is_empty() {
                    queue.committing = false;
                    return;
                }
                let take = queue.changes.len().min(MAX_GROUP);
                queue.changes.drain(..take).collect()
            };
            let Some(open) = db.upgrade() else {
                refuse(group, &StoreError("the idempotency store was closed".into()));
                continue;
            };
            let (replies, committed) = commit(&open, table, group);
            drop(open);
            for reply in replies {
                reply(&committed);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One transaction for `group`: what to tell each caller, and the commit's
/// outcome. A group that could not start is refused here.
fn commit(db: &Database, table: Definition, group: Vec<Change>) -> (Vec<Reply>, Result<(), StoreError>) {
    let fail = |e: &dyn std::fmt::Display| StoreError(e.to_string());
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            refuse(group, &fail(&e));
            return (Vec::new(), Ok(()));
        }
    };
    let replies: Vec<Reply> = {
        let mut t = match txn.open_table(table) {
            Ok(t) => t,
            Err(e) => {
                refuse(group, &fail(&e));
                return (Vec::new(), Ok(()));
            }
        };
        group
            .into_iter()
            .filter_map(|change| change(Ok(&mut t)))
            .collect()
    };
    let committed = txn.commit().map_err(|e| fail(&e));
    (replies, committed)
}

/// Tells every caller in `group` that its change could not be applied.
fn refuse(group: Vec<Change>, why: &StoreError) {
    for change in group {
        let _ = change(Err(why));
    }
}
