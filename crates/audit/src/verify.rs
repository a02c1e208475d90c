//! Checks an audit log's hash chain.

use crate::{GENESIS, line_hash};
use std::path::Path;

/// Where and why the chain is broken.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Entry `line` (1-based) does not continue the chain.
    #[error("line {line}: {reason}")]
    Broken {
        /// The first broken line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Verifies the chain of the log at `path`; returns the number of entries.
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    let data = std::fs::read(path).map_err(|source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0u64;
    let mut rest = &data[..];
    while !rest.is_empty() {
        let line_no = count as usize + 1;
        let broken = |reason: &str| VerifyError::Broken {
            line: line_no,
            reason: reason.to_owned(),
        };
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| broken("incomplete line (no newline)"))?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|_| broken("not a JSON object"))?;
        if value["prev"].as_str() != Some(prev.as_str()) {
            // The link between the previous line and this one is cut: the
            // previous line was edited, or lines were removed or reordered
            // here. Name the earliest line that can be at fault.
            return Err(match line_no {
                1 => broken("prev is not the genesis hash: lines were removed from the start"),
                n => VerifyError::Broken {
                    line: n - 1,
                    reason: format!(
                        "its hash does not match the prev recorded by line {n}: it was edited, or lines after it were removed or reordered"
                    ),
                },
            });
        }
        if value["seq"].as_u64() != Some(count + 1) {
            return Err(broken("seq is out of order"));
        }
        prev = line_hash(line);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditLog, Event};

    #[tokio::test]
    async fn an_edited_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for n in 0..3 {
            let event = Event::ApiKeyRevoke {
                key_id: format!("key_{n}"),
                name: "n".into(),
            };
            log.append("tester", event).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("key_1", "key_9", 1)).unwrap();
        match verify(&path).unwrap_err() {
            VerifyError::Broken { line, .. } => assert_eq!(line, 2),
            other => panic!("{other}"),
        }
    }
}
