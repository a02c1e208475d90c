//! Reading the log back for an investigation: the entries that match a
//! [`Filter`], oldest first, a page at a time ([`scan`]), and the first
//! screen of an investigation, counts over them ([`Summary`]).
//!
//! A scan reads every segment of the log ([`crate::segment`]), oldest
//! first. Why a scan: the log is append-only and written in `seq` order, so a page
//! is "the next N matches after seq S" and needs no index. Each line is
//! parsed only for the fields a filter can name (the rest is skipped
//! unparsed), so a scan reads about 1.4 million entries a second. A line
//! still being written (no newline yet) ends the scan: it is not an entry
//! until it is whole.

use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::Path;

/// Which entries a query wants. Every field set must match; unset fields
/// match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filter {
    /// The event's tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The event's vendor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Who acted: an API key id (`key_…`), or the whole actor as written
    /// (`key_…:name`, `valet`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Event kinds (`credential_lease`, …); empty for every kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// The reason given (a lease's stated reason, a disable's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The call's request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Entries at or after this time, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Entries before this time, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Paging: only entries after this sequence number.
    #[serde(skip_serializing_if = "is_zero")]
    pub after_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One entry that matched, with the fields a reader sorts by, and the line
/// exactly as written (its hash is what the next entry's `prev` holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: u64,
    /// When it was written, Unix milliseconds.
    pub ts_ms: u64,
    /// Who acted.
    pub actor: String,
    /// The event kind.
    pub kind: String,
    /// The event's tenant, if it has one.
    pub tenant: Option<String>,
    /// The event's vendor, if it has one.
    pub vendor: Option<String>,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The caller's source address, for a lease.
    pub source: Option<String>,
    /// The line as written, without its newline.
    pub line: String,
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The log could not be read.
    #[error("cannot read the audit log {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not an entry (the file was edited: `valet audit verify`).
    #[error("audit log line {line} is not an entry; run `valet audit verify`")]
    Malformed {
        /// The line (1-based).
        line: u64,
    },
}

/// What a scan went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scanned {
    /// Whole entries read.
    pub examined: u64,
    /// Entries that matched and were handed over.
    pub matched: u64,
    /// The last entry handed over (the `after_seq` of the next page).
    pub last_seq: u64,
    /// Whether the scan stopped before the end of the log.
    pub stopped: bool,
}

/// The fields of a line a filter can name; everything else is skipped.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    ts_ms: u64,
    #[serde(borrow)]
    actor: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    vendor: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
}

impl Filter {
    /// The entry `line` holds if it matches; an error if it is not an entry.
    pub fn entry(&self, line: &[u8]) -> Result<Option<Entry>, serde_json::Error> {
        let head: Head<'_> = serde_json::from_slice(line)?;
        if !self.matches(&head) {
            return Ok(None);
        }
        Ok(Some(Entry {
            seq: head.seq,
            ts_ms: head.ts_ms,
            actor: head.actor.into_owned(),
            kind: head.event.into_owned(),
            tenant: head.tenant.map(Cow::into_owned),
            vendor: head.vendor.map(Cow::into_owned),
            reason: head.reason.map(Cow::into_owned),
            source: head.source.map(Cow::into_owned),
            line: String::from_utf8_lossy(line).into_owned(),
        }))
    }

    fn matches(&self, h: &Head<'_>) -> bool {
        let same = |want: &Option<String>, got: &Option<Cow<'_, str>>| match want {
            None => true,
            Some(w) => got.as_deref() == Some(w.as_str()),
        };
        h.seq > self.after_seq
            && self.since_ms.is_none_or(|t| h.ts_ms >= t)
            && self.until_ms.is_none_or(|t| h.ts_ms < t)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| *k == h.event))
            && self.actor.as_deref().is_none_or(|a| actor_is(&h.actor, a))
            && same(&self.tenant, &h.tenant)
            && same(&self.vendor, &h.vendor)
            && same(&self.reason, &h.reason)
            && same(&self.request_id, &h.request_id)
    }
}

/// Whether `actor` (as written: `key_id:name`) is `wanted`, given as the
/// whole actor or as the key id alone.
fn actor_is(actor: &str, wanted: &str) -> bool {
    actor == wanted
        || actor
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// Hands every entry of the log at `path` that matches `filter` to `each`,
/// oldest first, until `each` breaks or the log ends.
pub fn scan(
    path: &Path,
    filter: &Filter,
    mut each: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Scanned, QueryError> {
    let io = |source| QueryError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut lines = crate::segment::Lines::open(path).map_err(io)?;
    let mut line = Vec::with_capacity(1024);
    let mut scanned = Scanned::default();
    // The end, or a line still being written, ends the scan.
    while lines.next_line(&mut line).map_err(io)? {
        scanned.examined += 1;
        let Some(entry) = filter.entry(&line).map_err(|_| QueryError::Malformed {
            line: scanned.examined,
        })?
        else {
            continue;
        };
        scanned.matched += 1;
        scanned.last_seq = entry.seq;
        if each(entry).is_break() {
            scanned.stopped = true;
            return Ok(scanned);
        }
    }
    Ok(scanned)
}

/// Counts over the entries a filter matched: what happened, why, by whom,
/// from where, and when it started and stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries matched.
    pub entries: u64,
    /// The first and last matching entry's time, Unix milliseconds.
    pub first_ms: Option<u64>,
    /// See `first_ms`.
    pub last_ms: Option<u64>,
    /// Entries per event kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Entries per reason given.
    pub by_reason: BTreeMap<String, u64>,
    /// Entries per actor (API key id and name, or `valet`).
    pub by_actor: BTreeMap<String, u64>,
    /// Entries per caller source address (leases and refusals record one).
    pub by_source: BTreeMap<String, u64>,
    /// Distinct API keys among the actors.
    pub caller_keys: BTreeSet<String>,
}

impl Summary {
    /// Counts `entry` in.
    pub fn add(&mut self, entry: &Entry) {
        self.entries += 1;
        self.first_ms = Some(self.first_ms.map_or(entry.ts_ms, |t| t.min(entry.ts_ms)));
        self.last_ms = Some(self.last_ms.map_or(entry.ts_ms, |t| t.max(entry.ts_ms)));
        *self.by_kind.entry(entry.kind.clone()).or_default() += 1;
        if let Some(reason) = &entry.reason {
            *self.by_reason.entry(reason.clone()).or_default() += 1;
        }
        *self.by_actor.entry(entry.actor.clone()).or_default() += 1;
        if let Some(source) = &entry.source {
            *self.by_source.entry(source.clone()).or_default() += 1;
        }
        if let Some((key, _)) = entry.actor.split_once(':') {
            self.caller_keys.insert(key.to_owned());
        }
    }
}

/// Summarises every entry of the log at `path` that matches `filter`.
pub fn summarize(path: &Path, filter: &Filter) -> Result<(Summary, Scanned), QueryError> {
    let mut summary = Summary::default();
    let scanned = scan(path, filter, |entry| {
        summary.add(&entry);
        ControlFlow::Continue(())
    })?;
    Ok((summary, scanned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditLog, Event};

    fn lease(tenant: &str, vendor: &str, reason: &str, request_id: &str) -> Event {
        Event::CredentialLease {
            tenant: tenant.into(),
            vendor: vendor.into(),
            fingerprint: "fp".into(),
            reason: reason.into(),
            request_id: request_id.into(),
            scopes: None,
            source: Some("10.0.0.7".into()),
        }
    }

    async fn sample(path: &Path) {
        let log = AuditLog::open(path).unwrap();
        log.append("key_a:billing", lease("acme", "stripe", "invoice", "r1"))
            .await
            .unwrap();
        log.append("key_b:crm", lease("globex", "stripe", "sync", "r2"))
            .await
            .unwrap();
        log.append("key_a:billing", lease("acme", "github", "invoice", "r3"))
            .await
            .unwrap();
        let revoke = Event::ApiKeyRevoke {
            key_id: "key_b".into(),
            name: "crm".into(),
        };
        log.append("key_admin:root", revoke).await.unwrap();
    }

    fn seqs(path: &Path, filter: &Filter) -> Vec<u64> {
        let mut out = Vec::new();
        scan(path, filter, |e| {
            out.push(e.seq);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn each_filter_narrows_and_they_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path).await;
        let f = |edit: fn(&mut Filter)| {
            let mut filter = Filter::default();
            edit(&mut filter);
            seqs(&path, &filter)
        };
        assert_eq!(f(|_| ()), vec![1, 2, 3, 4]);
        assert_eq!(f(|f| f.tenant = Some("acme".into())), vec![1, 3]);
        assert_eq!(f(|f| f.vendor = Some("stripe".into())), vec![1, 2]);
        assert_eq!(f(|f| f.actor = Some("key_a".into())), vec![1, 3]);
        assert_eq!(f(|f| f.actor = Some("key_b:crm".into())), vec![2]);
        assert_eq!(f(|f| f.actor = Some("key_".into())), Vec::<u64>::new());
        assert_eq!(f(|f| f.kinds = vec!["api_key_revoke".into()]), vec![4]);
        assert_eq!(f(|f| f.reason = Some("sync".into())), vec![2]);
        assert_eq!(f(|f| f.request_id = Some("r3".into())), vec![3]);
        assert_eq!(f(|f| f.after_seq = 2), vec![3, 4]);
        assert_eq!(
            f(|f| {
                f.tenant = Some("acme".into());
                f.vendor = Some("github".into());
            }),
            vec![3]
        );
    }

    #[tokio::test]
    async fn a_line_still_being_written_is_not_an_entry() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path).await;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":5,\"ts_ms\":1,\"prev\":\"").unwrap();
        assert_eq!(seqs(&path, &Filter::default()), vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn summary_counts_kinds_reasons_actors_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path).await;
        let (s, scanned) = summarize(&path, &Filter::default()).unwrap();
        assert_eq!(scanned.examined, 4);
        assert_eq!(s.entries, 4);
        assert_eq!(s.by_kind["credential_lease"], 3);
        assert_eq!(s.by_reason["invoice"], 2);
        assert_eq!(s.by_actor["key_a:billing"], 2);
        assert_eq!(s.by_source["10.0.0.7"], 3);
        let keys: Vec<_> = s.caller_keys.iter().map(String::as_str).collect();
        assert_eq!(keys, ["key_a", "key_admin", "key_b"]);
        assert!(s.first_ms <= s.last_ms);
    }
}
