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

/// The biggest first event we scan before giving up and passing the stream through.
const MAX_SCAN: usize = 64 * 1024;

/// Upstream message endpoints announced by open legacy SSE streams, by local token.
/// An entry lives exactly as long as its stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct LegacyEndpoints(Arc<Mutex<HashMap<String, Url>>>);

impl LegacyEndpoints {
    pub(crate) fn get(&self, token: &str) -> Option<Url> {
        self.lock().get(token).cloned()
    }

    fn insert(&self, url: Url) -> Registration {
        let mut bytes = [0u8; 16];
        // The token only needs to be unguessable by other local processes; if the OS
        // RNG fails we cannot make one, and the stream is refused.
        getrandom::fill(&mut bytes).expect("the OS random number generator is available");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.lock().insert(token.clone(), url);
        Registration {
            endpoints: self.clone(),
            token,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Url>> {
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
    /// Local path prefix for rewritten endpoints: `/<server>/messages/`.
    local_prefix: String,
    endpoints: LegacyEndpoints,
    registration: Option<Registration>,
}

enum State {
    Scanning(BytesMut),
    Passing,
}

impl<S> EndpointRewriter<S> {
    pub(crate) fn new(inner: S, base: Url, server: &str, endpoints: LegacyEndpoints) -> Self {
        Self {
            inner,
            state: State::Scanning(BytesMut::new()),
            base,
            local_prefix: format!("/{server}/messages/"),
            endpoints,
            registration: None,
        }
    }

    /// Looks at the buffered start of the stream. Returns the bytes to emit once the
    /// first event is complete (rewritten or not), or `None` to keep reading.
    fn scan(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        // Blocks that dispatch nothing (comments, keep-alives) may come first.
        let mut start = 0;
        loop {
            let Some((text_len, block_len)) = first_block(&buf[start..]) else {
                if buf.len() > MAX_SCAN {
                    return Ok(Some(buf.split().freeze()));
                }
                return Ok(None);
            };
            let text = std::str::from_utf8(&buf[start..start + text_len]).unwrap_or("");
            match parse_block(text) {
                (_, None) => start += block_len,
                (Some("endpoint"), Some(data)) => {
                    let local = self.register(data.trim())?;
                    let mut out = BytesMut::with_capacity(buf.len() + local.len());
                    out.extend_from_slice(&buf[..start]);
                    out.extend_from_slice(format!("event: endpoint\ndata: {local}\n\n").as_bytes());
                    out.extend_from_slice(&buf[start + block_len..]);
                    return Ok(Some(out.freeze()));
                }
                _ => return Ok(Some(buf.split().freeze())),
            }
        }
    }

    /// Records the upstream endpoint and returns the local path that stands for it.
    fn register(&mut self, announced: &str) -> Result<String, std::io::Error> {
        let target = self.base.join(announced).map_err(|e| {
            invalid(format!("upstream sent an endpoint event that is not a URL: {e}"))
        })?;
        if target.origin() != self.base.origin() {
            return Err(invalid(format!(
                "upstream announced a message endpoint on another origin ({}); latchkey only forwards to the configured server's origin",
                target.origin().ascii_serialization()
            )));
        }
        let registration = self.endpoints.insert(target);
        let local = format!("{}{}", self.local_prefix, registration.token);
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
                        State::Scanning(buf) if !buf.is_empty() => {
                            Poll::Ready(Some(Ok(buf.freeze())))
                        }
                        _ => Poll::Ready(None),
                    };
                }
            };
            let State::Scanning(buf) = &mut this.state else {
                return Poll::Ready(Some(Ok(chunk)));
            };
            buf.extend_from_slice(&chunk);
            let mut buf = std::mem::take(buf);
            match this.scan(&mut buf) {
                Ok(None) => this.state = State::Scanning(buf),
                Ok(Some(out)) => {
                    this.state = State::Passing;
                    return Poll::Ready(Some(Ok(out)));
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

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// The first complete event block: (length of its text, offset just past its blank line).
fn first_block(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        let line_end = match buf[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(p) => i + p,
            None => return None,
        };
        let mut next = line_end + 1;
        if buf[line_end] == b'\r' {
            match buf.get(next) {
                Some(b'\n') => next += 1,
                None => return None,
                _ => {}
            }
        }
        if line_end == i {
            return Some((i, next));
        }
        i = next;
    }
    None
}

/// The `event` and `data` fields of one event block (SSE spec: `data` lines join with
/// a newline; a missing `event` means "message").
fn parse_block(block: &str) -> (Option<&str>, Option<String>) {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    if event.is_none() && data.is_some() {
        event = Some("message");
    }
    (event, data)
}
