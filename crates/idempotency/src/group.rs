//! Group commit for the embedded store: concurrent transitions share one
//! redb write transaction, and so one fsync.
//!
//! redb runs one write transaction at a time, each fsync'd on commit; with
//! a transaction per transition, WRITE calls queued behind each other's
//! fsyncs (two per call). Here a caller queues its change and, if no commit
//! is running, becomes the leader: it takes every queued change, applies
//! them in order in one transaction, commits, and hands each caller its
//! result. Callers that arrive meanwhile wait; when the commit ends, one of
//! them leads the next group (the way LevelDB's writers do). No caller is
//! told its change is done before the commit holding it is durable.

use crate::StoreError;
use redb::Database;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The table every change works on.
pub(crate) type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

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
    /// Signalled when a commit ends.
    ended: Condvar,
}

#[derive(Default)]
struct Queue {
    changes: Vec<Change>,
    committing: bool,
}

impl Group {
    /// Applies `f` in a committed transaction (shared with whatever else
    /// is queued) and returns its result once that commit is durable.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        db: &Database,
        table: redb::TableDefinition<'static, &'static str, &'static [u8]>,
        f: impl FnOnce(&mut Table<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
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
        let mut queue = self.lock();
        queue.changes.push(change);
        loop {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(StoreError("the idempotency commit was abandoned".into()));
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if queue.committing {
                queue = self.ended.wait(queue).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nobody is committing and ours is still queued: lead.
            queue.committing = true;
            let take = queue.changes.len().min(MAX_GROUP);
            let group: Vec<Change> = queue.changes.drain(..take).collect();
            drop(queue);
            commit(db, table, group);
            queue = self.lock();
            queue.committing = false;
            self.ended.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One transaction for `group`; every caller hears the commit's outcome.
fn commit(
    db: &Database,
    table: redb::TableDefinition<'static, &'static str, &'static [u8]>,
    group: Vec<Change>,
) {
    let fail = |e: &dyn std::fmt::Display| StoreError(e.to_string());
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return refuse(group, &fail(&e)),
    };
    let replies: Vec<Reply> = {
        let mut t = match txn.open_table(table) {
            Ok(t) => t,
            Err(e) => return refuse(group, &fail(&e)),
        };
        group
            .into_iter()
            .filter_map(|change| change(Ok(&mut t)))
            .collect()
    };
    let committed = txn.commit().map_err(|e| fail(&e));
    for reply in replies {
        reply(&committed);
    }
}

/// Tells every caller in `group` that its change could not be applied.
fn refuse(group: Vec<Change>, why: &StoreError) {
    for change in group {
        let _ = change(Err(why));
    }
}
