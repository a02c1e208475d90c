//! `valet audit verify`.

use std::path::Path;

/// Verifies `file`; prints the result and returns the exit code.
pub fn verify(file: &Path) -> i32 {
    match valet_audit::verify(file) {
        Ok(n) => {
            println!("ok: {n} entries, hash chain intact");
            0
        }
        Err(e) => {
            eprintln!("audit log {}: {e}", file.display());
            1
        }
    }
}
