//! The Admin service's audit RPCs: reading the log back for an
//! investigation. They need the `audit_view` permission, which admin keys do
//! not have unless granted by name, and every query is recorded
//! (`audit_query`) before anything is read: no record, no answer.

use super::{AdminService, timestamp};
use crate::app::actor;
use crate::proto;
use crate::status::{Failure, Reason};
use std::ops::ControlFlow;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};
use valet_access::Permission;
use valet_audit::Event;
use valet_audit::query::{self, Filter, QueryError};
use valet_audit::ship::Shipper;

/// A page's size when the request names none, and the most it may name.
const DEFAULT_LIMIT: u32 = 1_000;
const MAX_LIMIT: u32 = 10_000;

/// Entries in flight between the scan and the stream.
const STREAM_BUFFER: usize = 64;

/// What `QueryAudit` streams.
pub(super) type EntryStream = ReceiverStream<Result<proto::AuditEntry, Status>>;

impl AdminService {
    pub(super) async fn query_audit(
        &self,
        request: Request<proto::QueryAuditRequest>,
    ) -> Result<EntryStream, Failure> {
        let caller = self.permitted(&request, Permission::AuditView)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => {
                return Err(Failure::invalid(
                    "limit",
                    Reason::AuditLimitInvalid,
                    format!("at most {MAX_LIMIT}"),
                ));
            }
        };
        let mut filter = filter_from_wire(req.filter.unwrap_or_default())?;
        if req.fleet {
            let shipper = self.fleet_copy()?;
            if !req.after_id.is_empty() && !is_stream_id(&req.after_id) {
                return Err(Failure::invalid(
                    "after_id",
                    Reason::AuditCursorInvalid,
                    "not a stream id (the `stream_id` of an entry a fleet query returned, e.g. 1733332800000-0)",
                ));
            }
            self.record_query(&actor(&caller), "fleet query", &filter).await?;
            return Ok(fleet_stream(shipper, filter, req.after_id, limit));
        }
        filter.after_seq = req.after_seq;
        self.record_query(&actor(&caller), "query", &filter).await?;

        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let path = self.app.audit.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut left = limit;
            let scanned = query::scan(&path, &filter, |entry| {
                // A caller that hung up stops the scan.
                if tx.blocking_send(Ok(entry_to_wire(entry))).is_err() {
                    return ControlFlow::Break(());
                }
                left -= 1;
                if left == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if let Err(e) = scanned {
                let _ = tx.blocking_send(Err(unreadable(&e).into_status(None)));
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    pub(super) async fn summarize_audit(
        &self,
        request: Request<proto::SummarizeAuditRequest>,
    ) -> Result<proto::AuditSummary, Failure> {
        let caller = self.permitted(&request, Permission::AuditView)?;
        let req = request.into_inner();
        let filter = filter_from_wire(req.filter.unwrap_or_default())?;
        if req.fleet {
            let shipper = self.fleet_copy()?;
            self.record_query(&actor(&caller), "fleet summary", &filter)
                .await?;
            return fleet_summary(&shipper, &filter).await;
        }
        self.record_query(&actor(&caller), "summary", &filter).await?;
        let path = self.app.audit.path().to_owned();
        let summed = tokio::task::spawn_blocking(move || query::summarize(&path, &filter))
            .await
            .map_err(|_| Failure::new(Reason::Internal, "the summary was interrupted"))?;
        let (summary, scanned) = summed.map_err(|e| unreadable(&e))?;
        Ok(summary_to_wire(summary, scanned.examined))
    }

    /// The shipped copy a fleet query reads.
    fn fleet_copy(&self) -> Result<Shipper, Failure> {
        self.app.audit_ship.clone().ok_or_else(|| {
            Failure::new(
                Reason::AuditNotShipped,
                "this replica does not ship its audit log ([audit] ship), so it cannot read the fleet's copy; query each replica instead",
            )
        })
    }

    /// Puts the query itself on the record, durably, before it runs.
    async fn record_query(&self, actor: &str, view: &str, filter: &Filter) -> Result<(), Failure> {
        let event = Event::AuditQuery {
            view: view.to_owned(),
            filter: serde_json::to_value(filter).expect("a filter serialises"),
        };
        self.app.record(actor, event).await.map_err(|e| {
            tracing::error!(error = %e, "audit log unavailable; refusing an audit query");
            Failure::new(
                Reason::AuditUnavailable,
                "the query could not be recorded in the audit log, so it was not run",
            )
        })
    }
}

/// Whether `id` is a Redis stream id: `<ms>-<seq>`, both decimal.
fn is_stream_id(id: &str) -> bool {
    // Both parts a u64, and not the last id there is (nothing follows it).
    let part = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    id.split_once('-')
        .and_then(|(ms, seq)| Some((part(ms)?, part(seq)?)))
        .is_some_and(|id| id != (u64::MAX, u64::MAX))
}

/// Entries of the fleet's copy read per request to Redis.
const FLEET_PAGE: usize = 1_000;

/// Streams the fleet's copy: every shipped entry after `after_id` that
/// matches, at most `limit`, in the order shipped.
fn fleet_stream(shipper: Shipper, filter: Filter, after_id: String, limit: u32) -> EntryStream {
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut after = after_id;
        let mut left = limit;
        loop {
            let page = match shipper.fleet_page(&after, FLEET_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(copy_unavailable(&e).into_status(None))).await;
                    return;
                }
            };
            let full = page.len() == FLEET_PAGE;
            for shipped in page {
                after.clone_from(&shipped.stream_id);
                let Ok(Some(entry)) = filter.entry(shipped.line.as_bytes()) else {
                    continue;
                };
                let mut wire = entry_to_wire(entry);
                wire.log = shipped.log_id;
                wire.stream_id = shipped.stream_id;
                if tx.send(Ok(wire)).await.is_err() {
                    return; // the caller hung up
                }
                left -= 1;
                if left == 0 {
                    return;
                }
            }
            if !full {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The summary of the fleet's copy.
async fn fleet_summary(shipper: &Shipper, filter: &Filter) -> Result<proto::AuditSummary, Failure> {
    let mut summary = query::Summary::default();
    let mut examined = 0u64;
    let mut after = String::new();
    loop {
        let page = shipper
            .fleet_page(&after, FLEET_PAGE)
            .await
            .map_err(|e| copy_unavailable(&e))?;
        let full = page.len() == FLEET_PAGE;
        for shipped in page {
            examined += 1;
            after = shipped.stream_id;
            if let Ok(Some(entry)) = filter.entry(shipped.line.as_bytes()) {
                summary.add(&entry);
            }
        }
        if !full {
            return Ok(summary_to_wire(summary, examined));
        }
    }
}

fn copy_unavailable(e: &str) -> Failure {
    tracing::error!(error = %e, "the fleet's audit copy could not be read");
    Failure::new(
        Reason::AuditCopyUnavailable,
        "the fleet's audit copy (Redis) could not be read; each replica's own log still can (query without fleet)",
    )
}

fn unreadable(e: &QueryError) -> Failure {
    tracing::error!(error = %e, "audit log unreadable");
    let why = match e {
        QueryError::Io { .. } => "the audit log could not be read".to_owned(),
        QueryError::Malformed { line } => {
            format!("audit log line {line} is not an entry; run `valet audit verify` on it")
        }
    };
    Failure::new(Reason::AuditLogUnreadable, why)
}

/// The filter as given: empty strings are unset; kinds must be known; the
/// range must not be empty.
fn filter_from_wire(f: proto::AuditFilter) -> Result<Filter, Failure> {
    let set = |s: String| (!s.is_empty()).then_some(s);
    if let Some(kind) = f.kinds.iter().find(|k| !Event::KINDS.contains(&k.as_str())) {
        return Err(Failure::invalid(
            "filter.kinds",
            Reason::AuditKindUnknown,
            format!(
                "'{kind}' is not an event kind (one of: {})",
                Event::KINDS.join(", ")
            ),
        ));
    }
    let since_ms = f.since.map(|t| time_ms("filter.since", &t)).transpose()?;
    let until_ms = f.until.map(|t| time_ms("filter.until", &t)).transpose()?;
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since >= until
    {
        return Err(Failure::invalid(
            "filter.until",
            Reason::AuditRangeInvalid,
            "must be after filter.since",
        ));
    }
    Ok(Filter {
        tenant: set(f.tenant),
        vendor: set(f.vendor),
        actor: set(f.actor),
        kinds: f.kinds,
        reason: set(f.reason),
        request_id: set(f.request_id),
        since_ms,
        until_ms,
        after_seq: 0,
    })
}

fn time_ms(field: &str, t: &prost_types::Timestamp) -> Result<u64, Failure> {
    let ms = t
        .seconds
        .checked_mul(1000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1_000_000)));
    match ms {
        Some(ms) if ms >= 0 && (0..1_000_000_000).contains(&t.nanos) => Ok(ms as u64),
        _ => Err(Failure::invalid(
            field,
            Reason::AuditRangeInvalid,
            "not a time after 1970",
        )),
    }
}

fn entry_to_wire(e: query::Entry) -> proto::AuditEntry {
    proto::AuditEntry {
        seq: e.seq,
        time: Some(timestamp(e.ts_ms)),
        kind: e.kind,
        actor: e.actor,
        tenant: e.tenant.unwrap_or_default(),
        vendor: e.vendor.unwrap_or_default(),
        json: e.line,
        log: String::new(),
        stream_id: String::new(),
    }
}

fn summary_to_wire(s: query::Summary, examined: u64) -> proto::AuditSummary {
    let counts = |map: std::collections::BTreeMap<String, u64>| {
        let mut counts: Vec<_> = map
            .into_iter()
            .map(|(name, count)| proto::AuditCount { name, count })
            .collect();
        counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        counts
    };
    proto::AuditSummary {
        entries: s.entries,
        first: s.first_ms.map(timestamp),
        last: s.last_ms.map(timestamp),
        by_kind: counts(s.by_kind),
        by_reason: counts(s.by_reason),
        by_actor: counts(s.by_actor),
        by_source: counts(s.by_source),
        caller_keys: s.caller_keys.len() as u64,
        examined,
    }
}
