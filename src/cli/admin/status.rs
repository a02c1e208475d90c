//! `valet status`'s text: one replica's state, laid out for a terminal.

use crate::proto;
use std::fmt::Write as _;

/// The status as lines: the headline (build, uptime, ready or why not),
/// then backends, vendors, the cache and the counts.
pub(super) fn render(status: &proto::ServerStatus) -> String {
    let mut out = String::new();
    let up = humantime::format_duration(std::time::Duration::from_secs(status.uptime_seconds));
    let _ = writeln!(out, "valet {} — up {up}", status.version);
    match status.ready {
        true => out.push_str("ready: yes\n"),
        false => {
            let _ = writeln!(out, "ready: NO ({})", status.not_ready.join("; "));
        }
    }
    if !status.degraded.is_empty() {
        let _ = writeln!(out, "degraded: {}", status.degraded.join("; "));
    }
    out.push_str("\nbackends:\n");
    for b in &status.backends {
        let state = if b.ok { "ok" } else { "FAILING" };
        let line = format!("  {:<12} {:<6} {state:<8} {}", b.role, b.kind, b.detail);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push_str("\nvendors:\n");
    if status.vendors.is_empty() {
        out.push_str("  (none configured)\n");
    }
    for v in &status.vendors {
        let breaker = match v.breaker.as_str() {
            "closed" => "closed".to_owned(),
            other => other.to_uppercase(),
        };
        let _ = writeln!(out, "  {:<20} breaker {breaker}", v.name);
    }
    out.push('\n');
    match &status.credential_cache {
        Some(c) => {
            let lookups = c.hits + c.misses + c.stale;
            let ratio = match lookups {
                0 => "-".to_owned(),
                n => format!("{:.1}%", c.hits as f64 * 100.0 / n as f64),
            };
            let _ = writeln!(
                out,
                "credential cache: {} entries, hit ratio {ratio} ({} hits, {} misses, {} stale)",
                c.entries, c.hits, c.misses, c.stale
            );
        }
        None => out.push_str("credential cache: none (local store)\n"),
    }
    for sink in &status.audit_sinks {
        let state = match (sink.up, sink.refusing) {
            (_, true) => "REFUSING new entries",
            (true, false) => "up",
            (false, false) => "DOWN",
        };
        let _ = writeln!(
            out,
            "audit shipping to {}: {state}, shipped to seq {}, {} behind{}",
            sink.sink,
            sink.shipped,
            sink.behind,
            match sink.error.as_str() {
                "" => String::new(),
                e => format!(" ({e})"),
            }
        );
    }
    let _ = writeln!(out, "api keys: {} valid", status.api_keys);
    let _ = writeln!(out, "credentials: {}", status.credentials);
    if let Some(age) = status.control_state_age_ms {
        let _ = writeln!(out, "control state: confirmed by Redis {age} ms ago");
    }
    out
}
