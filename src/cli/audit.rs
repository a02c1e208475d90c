//! `valet audit verify`.

use std::path::Path;

/// Verifies `file` (with `config`, its signed segment index too; with
/// `anchor`, against its shipped copy); prints the result and returns the
/// exit code.
pub async fn verify(file: &Path, anchor: Option<&str>, log_id: Option<&str>, config: Option<&Path>) -> i32 {
    if let Some(config) = config
        && let Err(e) = check_index(file, config)
    {
        eprintln!("audit log {}: {e}", file.display());
        return 1;
    }
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

/// Checks the segment index with the master key named by `config`.
fn check_index(file: &Path, config: &Path) -> Result<(), String> {
    use crate::config::MasterKeySource;
    let config = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    let source = config
        .secrets
        .master_key
        .clone()
        .unwrap_or_else(|| MasterKeySource::File(config.state.dir.join("master.key")));
    let master = match source {
        MasterKeySource::File(path) if path.exists() => {
            valet_credentials::MasterKey::load_or_create(&path)
                .map_err(|e| e.to_string())?
                .0
        }
        MasterKeySource::File(path) => return Err(format!("no master key at {}", path.display())),
        MasterKeySource::Env(var) => {
            valet_credentials::MasterKey::from_env(&var).map_err(|e| e.to_string())?
        }
        MasterKeySource::AwsSecret(id) => {
            return Err(format!(
                "the master key is in Secrets Manager ({id}): the index is checked with a file or environment key only; run verify without --config, or with --anchor"
            ));
        }
    };
    match valet_audit::index::check(file, &crate::app::audit_index_key(&master)) {
        Ok(valet_audit::index::IndexCheck::Matched { segments }) => {
            println!(
                "ok: the signed index lists {segments} sealed segments, each present and ending as listed"
            );
            Ok(())
        }
        Ok(valet_audit::index::IndexCheck::Absent) => {
            println!("note: no segment index (no segment sealed yet)");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}
