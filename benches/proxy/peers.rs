//! The processes the benchmark runs beside Valet: nginx as the vendor (a
//! static 200, never the bottleneck), nginx as the header-injecting reverse
//! proxy a platform team would otherwise run, and the hyper limit proxy.

use crate::procstat::Tree;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The vendor's answer to every request.
pub(crate) const BODY: &str = r#"{"id":"usr_123","name":"Ada","plan":"pro"}"#;

/// A child process, killed when dropped.
pub(crate) struct Process {
    child: Child,
}

impl Process {
    pub(crate) fn new(child: Child) -> Self {
        Self { child }
    }

    pub(crate) fn tree(&self) -> Tree {
        Tree(self.child.id())
    }
}

impl Drop for Process {
    /// SIGTERM and wait: nginx's master stops its workers on TERM, and a
    /// SIGKILL'd master would leave them running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Where an nginx keeps its temp files, pid and error log.
fn nginx_prelude(dir: &Path, name: &str, workers: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes {workers};\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  http2_max_requests 10000000;\n  \
         http2_max_concurrent_streams 1024;\n  client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n"
    )
}

fn start_nginx(dir: &Path, name: &str, config: String, ports: &[u16]) -> Process {
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, config).expect("nginx config");
    let child = Command::new(nginx())
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs (scripts/bench installs nginx-light)");
    for port in ports {
        crate::wait_for_port(*port);
    }
    Process { child }
}

fn nginx() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// The vendor: HTTP/1.1 on `http1` (for the proxies) and h2c on `h2c` (for
/// the direct calls), one worker, a static JSON 200 for every method.
pub(crate) fn vendor(dir: &Path, http1: u16, h2c: u16) -> Process {
    let config = format!(
        "{}  server {{\n    listen 127.0.0.1:{http1} reuseport;\n    listen 127.0.0.1:{h2c} http2;\n    \
         location / {{ default_type application/json; return 200 '{BODY}'; }}\n  }}\n}}\n",
        nginx_prelude(dir, "vendor", "1")
    );
    start_nginx(dir, "vendor", config, &[http1, h2c])
}

/// nginx as the hand-rolled gateway: h2c in, `Authorization` injected,
/// pooled HTTP/1.1 keep-alive connections to the vendor.
pub(crate) fn nginx_proxy(dir: &Path, port: u16, vendor_http1: u16) -> Process {
    let config = format!(
        "{}  upstream vendor {{ server 127.0.0.1:{vendor_http1}; keepalive 256; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{port} http2;\n    location / {{\n      proxy_pass http://vendor;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
         proxy_set_header Authorization \"Bearer bench-secret-0123456789\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        nginx_prelude(dir, "peer", "auto")
    );
    start_nginx(dir, "peer", config, &[port])
}

/// The hyper limit proxy ([`crate::limit`]), this binary run again.
pub(crate) fn limit_proxy(port: u16, vendor_http1: u16) -> Process {
    this_binary_as(
        crate::limit::ROLE,
        format!("{port} http://127.0.0.1:{vendor_http1}"),
        port,
    )
}

/// The slow vendor ([`crate::limit::slow_vendor`]), this binary run again.
pub(crate) fn slow_vendor(port: u16) -> Process {
    this_binary_as(crate::limit::SLOW_VENDOR, port.to_string(), port)
}

/// This benchmark binary run again as the helper `role` names, once it
/// listens on `port`.
fn this_binary_as(role: &str, value: String, port: u16) -> Process {
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env(role, value)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the bench helper runs");
    crate::wait_for_port(port);
    Process { child }
}
