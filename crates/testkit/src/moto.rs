//! The Secrets Manager emulator: moto's server mode, on a free loopback
//! port, started and stopped by the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server`; killed when dropped.
pub struct Moto {
    child: Option<Child>,
    port: u16,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers HTTP.
    ///
    /// Panics with the install command when `moto_server` is missing
    /// (`scripts/test` installs it).
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = spawn_moto(port);
        let moto = Self {
            child: Some(child),
            port,
        };
        moto.wait_ready().await;
        moto
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the emulator (the endpoint then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls until moto accepts a request: the process gives no other
    /// readiness signal. Bounded, so a broken install fails the test.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let probe = b"GET /moto-api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
                let mut buf = [0u8; 12];
                if stream.write_all(probe).await.is_ok()
                    && stream.read_exact(&mut buf).await.is_ok()
                    && buf.starts_with(b"HTTP/1.")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `$MOTO_SERVER`, else `moto_server` on PATH, else `python3 -m moto.server`
/// (pip may install the script where PATH does not look, e.g. before a pyenv
/// rehash).
fn spawn_moto(port: u16) -> Child {
    let port = port.to_string();
    let args = ["-H", "127.0.0.1", "-p", port.as_str()];
    let run = |program: &str, prefix: &[&str]| {
        Command::new(program)
            .args(prefix)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    // Test set-up: which emulator binary to run is the test runner's choice.
    #[allow(clippy::disallowed_methods)]
    let configured = std::env::var("MOTO_SERVER");
    if let Ok(bin) = configured {
        return run(&bin, &[]).unwrap_or_else(|e| panic!("cannot run MOTO_SERVER={bin}: {e}"));
    }
    run("moto_server", &[])
        .or_else(|_| run("python3", &["-m", "moto.server"]))
        .unwrap_or_else(|e| panic!("cannot run moto ({e}); install it with: pip install 'moto[server]'"))
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
