//! A minimal, fast MCP server for `scripts/bench`: Streamable HTTP with JSON replies,
//! answering `tools/call echo` in microseconds so that a proxy's own cost shows.
//!
//! Usage: mcp-fast [--protected] [--dpop ALG] [--token-lifetime SECS] [--direct-token TOKEN] [ADDR]
//!
//! - `POST /mcp`: `initialize` (gives an `Mcp-Session-Id`, which is then accepted but
//!   not checked), notifications (202), `ping`, `tools/list` and `tools/call echo`.
//! - `GET /mcp`: an idle SSE stream (one comment, then nothing until the client leaves).
//! - `GET /stream/<N>`: an SSE response of N bytes (`data:` events of 16 KiB), then the end.
//! - `DELETE /mcp`: 200.
//!
//! `--protected` requires a bearer token issued by the testkit's authorization server
//! (started alongside, approving every login at once, with `--token-lifetime`, default
//! 3600 s), or the `--direct-token` (for clients that talk to it directly). The first
//! line printed is the MCP URL; in protected mode the second is the issuer.
//!
//! `--dpop ALG` (with `--protected`): the authorization server offers DPoP with ALG
//! only (`ES256` or `EdDSA`) and binds its tokens, and the 401 has a DPoP challenge;
//! a bound token is taken only with the DPoP scheme and a `DPoP` header. The proof is
//! not verified here: the bench measures the client's cost of making it, and the
//! testkit's tests check proofs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use latchkey_testkit::{AuthOptions, AuthServer, PrmAt};
use serde_json::{Value, json};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// The size of one `data:` event of a `/stream/<N>` response.
const EVENT: usize = 16 * 1024;

struct Fast {
    auth: Option<(AuthServer, String)>,
    dpop: bool,
    direct_token: Option<String>,
    sessions: AtomicU64,
}

fn usage(msg: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{msg}\nusage: mcp-fast [--protected] [--dpop ALG] [--token-lifetime SECS] [--direct-token TOKEN] [ADDR]"
        ),
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut protected, mut lifetime, mut direct_token) = (false, 3600, None);
    let mut dpop: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--protected" => protected = true,
            "--dpop" => {
                dpop = Some(
                    args.next()
                        .ok_or_else(|| usage("--dpop needs ES256 or EdDSA"))?,
                )
            }
            "--token-lifetime" => {
                let v = args
                    .next()
                    .ok_or_else(|| usage("--token-lifetime needs a value"))?;
                lifetime = v.parse().map_err(|_| usage("--token-lifetime: seconds"))?;
            }
            "--direct-token" => {
                direct_token = Some(
                    args.next()
                        .ok_or_else(|| usage("--direct-token needs a value"))?,
                );
            }
            other => {
                addr = other
                    .parse()
                    .map_err(|e| usage(&format!("{other:?}: {e}")))?
            }
        }
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}/mcp");
    let auth = if protected {
        let server = AuthServer::start(AuthOptions {
            prm_at: PrmAt::HeaderOnly,
            claimed_resource: Some(url.clone()),
            token_lifetime: lifetime,
            dpop: dpop.is_some(),
            dpop_algs: dpop.clone().map(|alg| vec![alg]),
            ..AuthOptions::default()
        })
        .await?;
        let offer = dpop
            .as_ref()
            .map(|alg| format!(", DPoP algs=\"{alg}\""))
            .unwrap_or_default();
        let challenge = format!(
            "Bearer resource_metadata=\"{}\", scope=\"mcp:read\"{offer}",
            server.header_prm_url()
        );
        Some((server, challenge))
    } else {
        None
    };
    println!("{url}");
    if let Some((server, _)) = &auth {
        println!("{}", server.issuer());
    }
    let fast = Arc::new(Fast {
        auth,
        dpop: dpop.is_some(),
        direct_token,
        sessions: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let fast = fast.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fast = fast.clone();
                async move { Ok::<_, Infallible>(handle(&fast, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    response
}

fn authorized(fast: &Fast, req: &Request<Incoming>) -> bool {
    let Some((server, _)) = &fast.auth else {
        return true;
    };
    let Some((scheme, token)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    if scheme == "Bearer" && fast.direct_token.as_deref() == Some(token) {
        return true;
    }
    let bound = fast.dpop && server.bound_to(token).is_some();
    let scheme_ok = if bound {
        scheme == "DPoP" && req.headers().contains_key("dpop")
    } else {
        scheme == "Bearer"
    };
    scheme_ok && server.access_token(token).is_some()
}

async fn handle(fast: &Fast, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/stats" {
        return stats(fast);
    }
    if !authorized(fast, &req) {
        let mut response = full(StatusCode::UNAUTHORIZED, None, Bytes::new());
        if let Some((_, challenge)) = &fast.auth
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return response;
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/mcp") => post(fast, req).await,
        (&Method::GET, "/mcp") => idle_stream(),
        (&Method::GET, p) if p.starts_with("/stream/") => match p["/stream/".len()..].parse() {
            Ok(n) => sized_stream(n),
            Err(_) => full(StatusCode::NOT_FOUND, None, Bytes::new()),
        },
        (&Method::DELETE, "/mcp") => full(StatusCode::OK, None, Bytes::new()),
        _ => full(StatusCode::NOT_FOUND, None, Bytes::new()),
    }
}

async fn post(fast: &Fast, req: Request<Incoming>) -> Response<Body> {
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return full(StatusCode::BAD_REQUEST, None, Bytes::new());
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return full(StatusCode::BAD_REQUEST, None, Bytes::new());
    };
    let Some(id) = message.get("id").cloned() else {
        // A notification or a response from the client.
        return full(StatusCode::ACCEPTED, None, Bytes::new());
    };
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let mut session = None;
    let outcome = match method {
        "initialize" => {
            let n = fast.sessions.fetch_add(1, Ordering::Relaxed);
            session = Some(format!("fast-{n}"));
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            Ok(json!({
                "protocolVersion": version,
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "mcp-fast", "version": "0.1.0" }
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": [{
            "name": "echo",
            "description": "Echoes back the input",
            "inputSchema": {
                "type": "object",
                "properties": { "message": { "type": "string" } },
                "required": ["message"]
            }
        }]})),
        "tools/call" if params.get("name").and_then(Value::as_str) == Some("echo") => {
            let text = params
                .pointer("/arguments/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok(json!({ "content": [{ "type": "text", "text": format!("Echo: {text}") }] }))
        }
        "tools/call" => Err((-32602, "unknown tool")),
        _ => Err((-32601, "method not found")),
    };
    let reply = match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err((code, msg)) => {
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": msg } })
        }
    };
    let bytes = serde_json::to_vec(&reply).unwrap_or_default();
    let mut response = full(StatusCode::OK, Some("application/json"), bytes.into());
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert("mcp-session-id", session);
    }
    response
}

/// How many token requests the authorization server has answered, by grant type (so
/// the bench can show that refreshes happened during the run).
fn stats(fast: &Fast) -> Response<Body> {
    let mut grants = serde_json::Map::new();
    if let Some((server, _)) = &fast.auth {
        for grant in server.token_requests() {
            let n = grants.get(&grant).and_then(Value::as_u64).unwrap_or(0);
            grants.insert(grant, json!(n + 1));
        }
    }
    let body = serde_json::to_vec(&json!({ "grants": grants })).unwrap_or_default();
    full(StatusCode::OK, Some("application/json"), body.into())
}

fn sse(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One comment, so the client sees the stream open, then nothing.
fn idle_stream() -> Response<Body> {
    let open = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
        b": open\n\n",
    )))]);
    let body = open.chain(futures_util::stream::pending());
    sse(BodyExt::boxed(StreamBody::new(body)))
}

/// `total` bytes of SSE: `data:` events of [`EVENT`] bytes each (the last one shorter).
fn sized_stream(total: u64) -> Response<Body> {
    let mut event = vec![b'x'; EVENT];
    event[..6].copy_from_slice(b"data: ");
    event[EVENT - 2..].copy_from_slice(b"\n\n");
    let event = Bytes::from(event);
    let mut left = total;
    let frames = futures_util::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(EVENT as u64) as usize;
        left -= n as u64;
        let chunk = if n == EVENT {
            event.clone()
        } else {
            // A short last event: "data: xxx\n\n" cut to size (still one event when n >= 8).
            let mut tail = vec![b'x'; n];
            let head = b"data: ";
            let k = head.len().min(n);
            tail[..k].copy_from_slice(&head[..k]);
            if n >= 8 {
                tail[n - 2..].copy_from_slice(b"\n\n");
            }
            Bytes::from(tail)
        };
        Some(Ok::<_, Infallible>(Frame::data(chunk)))
    }));
    sse(BodyExt::boxed(StreamBody::new(frames)))
}
