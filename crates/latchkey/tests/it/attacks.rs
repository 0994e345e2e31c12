//! Issue 13's attacks on the local trust boundary and on resource limits, each run as
//! an attacker would: from the network side (a hostile upstream) or from loopback.

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt as _;
use axum::response::Response;
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Daemon, client, initialize};

/// An HTTP+SSE upstream whose stream sends `first` and then stays open.
async fn hostile_sse(first: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/sse",
        axum::routing::get(move || {
            let first = first.clone();
            async move {
                // One byte per chunk: the slowest case for a scanner that starts over.
                let chunks = futures_util::stream::iter(first.into_iter().map(|b| {
                    Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&[b]))
                }))
                .chain(futures_util::stream::pending());
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(chunks))
                    .expect("response")
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/sse")
}

#[tokio::test]
async fn a_legacy_upstream_cannot_stall_the_daemon_with_an_endless_first_line() {
    // 96 KiB without a newline: the bridge gives up on the first event at 64 KiB
    // instead of reading on (it used to wait for 32 MiB or its 30 s timeout).
    let url = hostile_sse(vec![b'x'; 96 * 1024]).await;
    let daemon = Daemon::builder()
        .server("legacy", &url, &["transport = \"sse\""])
        .start()
        .await;
    let response = client()
        .post(daemon.url("/legacy"))
        .timeout(Duration::from_secs(20))
        .json(&initialize())
        .send()
        .await
        .expect("an answer before the endpoint timeout");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("oversized first event"), "{body}");
}
