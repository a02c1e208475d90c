//! One memory budget for every vendor answer buffered at once: past it, a
//! call waits briefly, then is refused with a stable reason — never an
//! unbounded pile of 15 MiB answers.

mod support;

use std::time::Duration;
use support::{Valet, bearer, get, reason, vendor};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use valet::config::Config;
use valet::proto::Operation;

const BODY: usize = 48 << 10;
const FIRST_PART: usize = 40 << 10;

/// A vendor that sends 40 KiB of a 48 KiB answer, stalls for `stall`, then
/// sends the rest: each answer holds its room in the budget meanwhile. Says
/// on the channel when a first part has been sent.
async fn dripping_vendor(stall: Duration) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (sent, parts) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\nconnection: close\r\n\r\n");
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(&vec![b'a'; FIRST_PART]).await;
                let _ = sent.send(());
                tokio::time::sleep(stall).await;
                let _ = tcp.write_all(&vec![b'b'; BODY - FIRST_PART]).await;
            });
        }
    });
    (format!("http://{addr}"), parts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_the_memory_budget_are_refused_not_piled_up() {
    let (base, mut parts) = dripping_vendor(Duration::from_millis(1_500)).await;
    let mut config = Config {
        vendors: vec![vendor("drip", &base, bearer())],
        ..Config::default()
    };
    config.limits.max_response_body_bytes = 64 << 10;
    config.limits.max_buffered_response_bytes = 64 << 10;
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet.put_credential("acme", "drip", "budget-secret-0001").await;
    let key = valet.api_key(&["acme"], &["drip"], &[Operation::Read]).await;

    let first = {
        let mut gateway = valet.gateway().await;
        let req = support::authed(get("acme", "drip", "/v1/x"), &key);
        tokio::spawn(async move { gateway.call(req).await })
    };
    // Once the first answer holds 40 of the 64 KiB, a second cannot fit.
    parts.recv().await.unwrap();
    let err = valet.call(&key, get("acme", "drip", "/v1/x")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "RESPONSE_BUFFER_EXHAUSTED")
    );
    assert!(err.metadata().get("retry-after").is_some());
    let answer = first.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.body.len(), BODY);

    // The room came back with the first answer.
    let answer = valet.call(&key, get("acme", "drip", "/v1/x")).await.unwrap();
    assert_eq!(answer.body.len(), BODY);
}
