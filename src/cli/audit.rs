//! `valet audit verify`.

use std::path::Path;

/// Verifies `file` (and, with `anchor`, against its shipped copy); prints
/// the result and returns the exit code.
pub async fn verify(file: &Path, anchor: Option<&str>, log_id: Option<&str>) -> i32 {
    let Some(url) = anchor else {
        return match valet_audit::verify_report(file) {
            Ok(v) => {
                let expired: u64 = v.expired.iter().map(|(a, b)| b - a + 1).sum();
                let segments = match v.files {
                    0 | 1 => String::new(),
                    n => format!(" across {n} segments"),
                };
                println!("ok: {} entries{segments}, hash chain intact", v.entries);
                if expired > 0 {
                    println!(
                        "{expired} entries expired by retention in {} runs, each recorded by an audit_expired entry",
                        v.expired.len()
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("audit log {}: {e}", file.display());
                1
            }
        };
    };
    match valet_audit::anchor::check(file, url, log_id).await {
        Ok(m) => {
            println!(
                "ok: {} entries, hash chain intact; log {} matches its shipped copy up to seq {} ({} entries compared{})",
                m.entries,
                m.log_id,
                m.shipped,
                m.compared,
                match m.first_in_stream {
                    Some(first) if first > 1 => {
                        format!("; the stream holds nothing before seq {first}: trimmed (max_stream_entries) or wiped")
                    }
                    None => "; the stream holds none of its entries (trimmed or wiped): only the head was compared"
                        .to_owned(),
                    Some(_) => String::new(),
                }
            );
            if m.entries > m.shipped {
                println!(
                    "note: entries after seq {} are not shipped yet, so not covered by the anchor",
                    m.shipped
                );
            }
            0
        }
        Err(e) => {
            eprintln!("audit log {}: {e}", file.display());
            1
        }
    }
}
