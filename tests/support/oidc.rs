//! `oidc-provider` (OpenID certified, from npm) as a test's OAuth 2.0
//! authorization server: `tests/oidc/provider.mjs` on a free loopback port,
//! every line it prints kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncBufReadExt as _;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("oidc")
}

/// The provider's process and every line it printed.
pub struct OidcProvider {
    pub port: u16,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    _child: tokio::process::Child,
}

impl OidcProvider {
    /// Starts it with `clients` and `env`; `None` (after saying why) where
    /// Node.js or the package is missing.
    pub async fn start(clients: serde_json::Value, env: &[(&str, &str)]) -> Option<Self> {
        let ready = tokio::process::Command::new("node")
            .args([
                "-e",
                "import('oidc-provider').then(() => process.exit(0), () => process.exit(1))",
            ])
            .current_dir(dir())
            .output()
            .await;
        if !ready.is_ok_and(|o| o.status.success()) {
            println!("skipped: needs node and oidc-provider (npm ci in tests/oidc)");
            return None;
        }
        let port = super::free_port();
        let mut child = tokio::process::Command::new("node")
            .arg(dir().join("provider.mjs"))
            .arg(port.to_string())
            .env("OIDC_CLIENTS", clients.to_string())
            .envs(env.iter().copied())
            .current_dir(dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().expect("stdout");
        let into = lines.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut out = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if value["kind"] == "ready"
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
                into.lock().unwrap().push(value);
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), ready_rx)
            .await
            .expect("oidc-provider started")
            .expect("oidc-provider printed ready");
        Some(Self {
            port,
            lines,
            _child: child,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The lines of `kind` printed so far.
    pub fn logged(&self, kind: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == kind)
            .cloned()
            .collect()
    }
}
