//! `valet admin audit …`: entries by filter, and the summary of them.

use super::{Client, describe, or_dash, time};
use crate::cli::{AuditFilterArgs, AuditQueryCommand, OutputArg};
use crate::proto;
use std::io::{IsTerminal as _, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// The most entries one request asks for (the server's maximum page).
const PAGE: u64 = 10_000;

/// Runs one audit command.
pub(super) async fn run(client: &mut Client, cmd: AuditQueryCommand) -> Result<(), String> {
    match cmd {
        AuditQueryCommand::Query {
            filter,
            limit,
            after,
            fleet,
            after_id,
            output,
        } => {
            let output = output.unwrap_or_else(default_output);
            let from = match fleet {
                true => After::Shipped(after_id.unwrap_or_default()),
                false => After::Seq(after),
            };
            query(client, filter_to_wire(filter), limit, from, output).await
        }
        AuditQueryCommand::Summary {
            filter,
            fleet,
            output,
        } => {
            let request = proto::SummarizeAuditRequest {
                filter: Some(filter_to_wire(filter)),
                fleet,
            };
            let summary = client
                .summarize_audit(request)
                .await
                .map_err(describe)?
                .into_inner();
            match output.unwrap_or_else(default_output) {
                OutputArg::Table => print!("{}", render_summary(&summary)),
                OutputArg::Json => println!("{}", summary_json(&summary)),
            }
            Ok(())
        }
    }
}

/// Where a listing starts: after a seq of this replica's log, or after a
/// stream id of the fleet's shipped copy.
enum After {
    Seq(u64),
    Shipped(String),
}

impl std::fmt::Display for After {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            After::Seq(seq) => write!(f, "--after {seq}"),
            After::Shipped(id) => write!(f, "--fleet --after-id {id}"),
        }
    }
}

/// A table on a terminal, else JSON (for `jq` and scripts).
fn default_output() -> OutputArg {
    match std::io::stdout().is_terminal() {
        true => OutputArg::Table,
        false => OutputArg::Json,
    }
}

/// The summary as one JSON object: counts as `{name: count}` maps.
fn summary_json(s: &proto::AuditSummary) -> serde_json::Value {
    let counts = |c: &[proto::AuditCount]| {
        c.iter()
            .map(|c| (c.name.clone(), serde_json::Value::from(c.count)))
            .collect::<serde_json::Map<_, _>>()
    };
    let at = |t: Option<&prost_types::Timestamp>| match t {
        Some(_) => serde_json::Value::from(time(t)),
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "entries": s.entries,
        "examined": s.examined,
        "first": at(s.first.as_ref()),
        "last": at(s.last.as_ref()),
        "caller_keys": s.caller_keys,
        "by_kind": counts(&s.by_kind),
        "by_reason": counts(&s.by_reason),
        "by_actor": counts(&s.by_actor),
        "by_source": counts(&s.by_source),
    })
}

/// Pages through the matches, printing each as it arrives.
async fn query(
    client: &mut Client,
    filter: proto::AuditFilter,
    limit: Option<u64>,
    mut after: After,
    output: OutputArg,
) -> Result<(), String> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut left = limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let fleet = matches!(after, After::Shipped(_));
    if output == OutputArg::Table && fleet {
        let _ = write!(out, "{:<16}  ", "LOG");
    }
    if output == OutputArg::Table {
        let _ = writeln!(
            out,
            "{:>8}  {:<20}  {:<20}  {:<36}  {:<16}  VENDOR",
            "SEQ", "TIME", "KIND", "ACTOR", "TENANT"
        );
    }
    while left > 0 {
        let page = left.min(PAGE);
        let request = proto::QueryAuditRequest {
            filter: Some(filter.clone()),
            after_seq: match after {
                After::Seq(seq) => seq,
                After::Shipped(_) => 0,
            },
            fleet: matches!(after, After::Shipped(_)),
            after_id: match &after {
                After::Shipped(id) => id.clone(),
                After::Seq(_) => String::new(),
            },
            limit: page as u32,
        };
        let mut stream = client.query_audit(request).await.map_err(describe)?.into_inner();
        let mut got = 0u64;
        while let Some(entry) = stream.message().await.map_err(describe)? {
            after = match after {
                After::Seq(_) => After::Seq(entry.seq),
                After::Shipped(_) => After::Shipped(entry.stream_id.clone()),
            };
            got += 1;
            let written = match (output, fleet) {
                // A fleet entry says whose log it is from.
                (OutputArg::Json, true) => {
                    let line = serde_json::from_str::<serde_json::Value>(&entry.json)
                        .unwrap_or_else(|_| entry.json.clone().into());
                    let wrapped =
                        serde_json::json!({"log": entry.log, "stream_id": entry.stream_id, "entry": line});
                    writeln!(out, "{wrapped}")
                }
                (OutputArg::Json, false) => writeln!(out, "{}", entry.json),
                (OutputArg::Table, _) => {
                    if fleet {
                        let _ = write!(out, "{:<16}  ", entry.log);
                    }
                    writeln!(
                        out,
                        "{:>8}  {:<20}  {:<20}  {:<36}  {:<16}  {}",
                        entry.seq,
                        time(entry.time.as_ref()),
                        entry.kind,
                        entry.actor,
                        or_dash(&entry.tenant),
                        or_dash(&entry.vendor)
                    )
                }
            };
            // A closed pipe (`| head`) ends the listing quietly.
            if written.is_err() {
                return Ok(());
            }
        }
        printed += got;
        left -= got;
        if got < page {
            break; // the log has no more matches
        }
    }
    let _ = out.flush();
    drop(out);
    if output == OutputArg::Table {
        eprintln!("{printed} entries; continue after them with {after}");
    }
    Ok(())
}

fn filter_to_wire(f: AuditFilterArgs) -> proto::AuditFilter {
    proto::AuditFilter {
        tenant: f.tenant.unwrap_or_default(),
        vendor: f.vendor.unwrap_or_default(),
        actor: f.actor.unwrap_or_default(),
        kinds: f.kinds,
        reason: f.reason.unwrap_or_default(),
        request_id: f.request_id.unwrap_or_default(),
        since: f.since.map(timestamp),
        until: f.until.map(timestamp),
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The summary as a person reads it: totals first, then each breakdown.
fn render_summary(s: &proto::AuditSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} entries (of {} read), first {}, last {}",
        s.entries,
        s.examined,
        time(s.first.as_ref()),
        time(s.last.as_ref())
    );
    let _ = writeln!(out, "distinct caller keys: {}", s.caller_keys);
    for (title, counts) in [
        ("by kind", &s.by_kind),
        ("by reason", &s.by_reason),
        ("by actor", &s.by_actor),
        ("by source address", &s.by_source),
    ] {
        let _ = writeln!(out, "\n{title}:");
        if counts.is_empty() {
            out.push_str("  (none)\n");
        }
        for c in counts {
            let _ = writeln!(out, "  {:>8}  {}", c.count, c.name);
        }
    }
    out
}
