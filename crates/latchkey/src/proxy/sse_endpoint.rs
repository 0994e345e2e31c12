//! The 2024-11-05 HTTP+SSE transport: the upstream's `endpoint` event tells the client
//! where to POST. latchkey rewrites it to a local path, so the client posts to latchkey
//! (which adds credentials) and not straight to the upstream.
//!
//! Only the first event of a stream is looked at (the spec makes `endpoint` the first
//! event); after it, bytes pass through untouched, so the cost per stream is one small
//! parse.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use url::Url;

use super::sse::{self, Blocks, parse_block};

/// The biggest first event we scan before giving up and passing the stream through.
const MAX_SCAN: usize = 64 * 1024;

/// Upstream message endpoints announced by open legacy SSE streams, by local token,
/// each with the server it belongs to. An entry lives exactly as long as its stream.
#[derive(Clone, Default)]
pub struct LegacyEndpoints(Arc<Mutex<HashMap<String, (String, Url)>>>);

impl std::fmt::Debug for LegacyEndpoints {
    // The URLs carry the upstream's session ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LegacyEndpoints({} open)", self.lock().len())
    }
}

impl LegacyEndpoints {
    /// The upstream endpoint behind `token`, if `server` announced it: a token never
    /// sends one server's requests (and credentials) to another's endpoint.
    pub fn get(&self, server: &str, token: &str) -> Option<Url> {
        self.lock()
            .get(token)
            .filter(|(owner, _)| owner == server)
            .map(|(_, url)| url.clone())
    }

    fn insert(&self, server: &str, url: Url) -> Registration {
        let token = sse::random_token();
        self.lock().insert(token.clone(), (server.to_owned(), url));
        Registration {
            endpoints: self.clone(),
            token,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Url)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes its endpoint when the stream that announced it is dropped.
#[derive(Debug)]
struct Registration {
    endpoints: LegacyEndpoints,
    token: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.endpoints.lock().remove(&self.token);
    }
}

/// Wraps an upstream SSE body and rewrites its `endpoint` event.
pub(crate) struct EndpointRewriter<S> {
    inner: S,
    state: State,
    /// The upstream URL the stream came from; the announced endpoint is relative to it.
    base: Url,
    server: String,
    /// The path the client opened the stream at (`/<server>`, or a key URL's
    /// `/k/<key>/<server>`): the announced endpoint is under it.
    local: String,
    endpoints: LegacyEndpoints,
    registration: Option<Registration>,
}

enum State {
    Scanning(Blocks),
    Passing,
}

impl<S> EndpointRewriter<S> {
    pub(crate) fn new(
        inner: S,
        base: Url,
        server: &str,
        local: String,
        endpoints: LegacyEndpoints,
    ) -> Self {
        Self {
            inner,
            state: State::Scanning(Blocks::default()),
            base,
            server: server.to_owned(),
            local,
            endpoints,
            registration: None,
        }
    }

    /// Looks at the buffered start of the stream and splits off what can be sent now.
    /// Blocks that dispatch nothing (comments, keep-alives) go out at once; the first
    /// real event is rewritten if it is `endpoint`. Returns the bytes to send and
    /// whether scanning is over. `Blocks` scans each byte once, and at most
    /// `MAX_SCAN` bytes wait, so no upstream can make this loop expensive.
    fn scan(&mut self, blocks: &mut Blocks) -> Result<(Bytes, bool), std::io::Error> {
        let mut ready = BytesMut::new();
        loop {
            let Some((raw, text_len)) = blocks.next_raw() else {
                if blocks.len() > MAX_SCAN {
                    ready.unsplit(std::mem::take(blocks).into_rest());
                    return Ok((ready.freeze(), true));
                }
                return Ok((ready.freeze(), false));
            };
            let text = std::str::from_utf8(&raw[..text_len]).unwrap_or("");
            match parse_block(text) {
                (_, None) => ready.extend_from_slice(&raw),
                (Some("endpoint"), Some(data)) => {
                    let local = self.register(data.trim())?;
                    ready.extend_from_slice(
                        format!("event: endpoint\ndata: {local}\n\n").as_bytes(),
                    );
                    ready.unsplit(std::mem::take(blocks).into_rest());
                    return Ok((ready.freeze(), true));
                }
                _ => {
                    ready.extend_from_slice(&raw);
                    ready.unsplit(std::mem::take(blocks).into_rest());
                    return Ok((ready.freeze(), true));
                }
            }
        }
    }

    /// Records the upstream endpoint and returns the local path that stands for it.
    fn register(&mut self, announced: &str) -> Result<String, std::io::Error> {
        let target = sse::resolve_endpoint(&self.base, announced)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let registration = self.endpoints.insert(&self.server, target);
        let local = format!("{}/messages/{}", self.local, registration.token);
        self.registration = Some(registration);
        Ok(local)
    }
}

impl<S, E> Stream for EndpointRewriter<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let chunk = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    // The stream ended inside the first event: pass on what there was.
                    return match std::mem::replace(&mut this.state, State::Passing) {
                        State::Scanning(blocks) if !blocks.is_empty() => {
                            Poll::Ready(Some(Ok(blocks.into_rest().freeze())))
                        }
                        _ => Poll::Ready(None),
                    };
                }
            };
            let State::Scanning(blocks) = &mut this.state else {
                return Poll::Ready(Some(Ok(chunk)));
            };
            blocks.push(&chunk);
            let mut blocks = std::mem::take(blocks);
            match this.scan(&mut blocks) {
                Ok((ready, done)) => {
                    this.state = if done {
                        State::Passing
                    } else {
                        State::Scanning(blocks)
                    };
                    if !ready.is_empty() {
                        return Poll::Ready(Some(Ok(ready)));
                    }
                }
                Err(e) => {
                    this.state = State::Passing;
                    tracing::warn!(error = %e, "closing legacy SSE stream");
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    async fn rewrite(
        chunks: &[&str],
        base: &str,
    ) -> (Vec<Result<String, String>>, LegacyEndpoints) {
        let endpoints = LegacyEndpoints::default();
        let input = stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c.as_bytes())))
                .collect::<Vec<_>>(),
        );
        let base = Url::parse(base).expect("url");
        let out = EndpointRewriter::new(input, base, "srv", "/srv".into(), endpoints.clone())
            .map(|r| {
                r.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|e| e.to_string())
            })
            .collect()
            .await;
        (out, endpoints)
    }

    #[tokio::test]
    async fn rewrites_an_endpoint_split_across_chunks_after_a_comment() {
        let (out, endpoints) = rewrite(
            &[
                ": hi\r\n\r\nevent: endp",
                "oint\r\ndata: /messages?sessionId=1\r\n",
                "\r\nevent: message\r\ndata: {}\r\n\r\n",
            ],
            "https://mcp.example.com/sse",
        )
        .await;
        let text: String = out.into_iter().map(Result::unwrap).collect();
        let token = text
            .split("data: /srv/messages/")
            .nth(1)
            .and_then(|t| t.split('\n').next())
            .expect("rewritten endpoint");
        assert!(
            text.starts_with(": hi\r\n\r\nevent: endpoint\ndata: /srv/messages/"),
            "{text}"
        );
        assert!(
            text.ends_with("\n\nevent: message\r\ndata: {}\r\n\r\n"),
            "{text}"
        );
        // The stream was consumed and dropped, so its registration is gone again.
        assert_eq!(endpoints.get("srv", token), None);
    }

    #[tokio::test]
    async fn leaves_other_first_events_alone() {
        let (out, _) = rewrite(
            &["data: {\"jsonrpc\":\"2.0\"}\n\n", "data: x\n\n"],
            "http://127.0.0.1:1/mcp",
        )
        .await;
        let text: String = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(text, "data: {\"jsonrpc\":\"2.0\"}\n\ndata: x\n\n");
    }

    #[tokio::test]
    async fn refuses_an_endpoint_on_another_origin() {
        let (out, _) = rewrite(
            &["event: endpoint\ndata: https://evil.example/steal\n\n"],
            "https://mcp.example.com/sse",
        )
        .await;
        let error = out[0].as_ref().expect_err("refused");
        assert!(error.contains("another origin"), "{error}");
    }
}
