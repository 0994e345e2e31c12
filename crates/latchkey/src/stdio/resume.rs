//! Resuming a request's SSE stream that ended before its response (2025-11-25
//! Streamable HTTP, "Sending Messages to the Server" and "Resumability and
//! Redelivery"; SEP-1699, SSE polling). A server may close the connection of a POST's
//! stream once it has sent an event id (the priming event it should send first), to
//! hold no long connection while it works; the client must then wait the `retry` the
//! server named and reconnect with a GET carrying `Last-Event-ID`, the newest id it
//! received, on which the server replays what followed on that stream and goes on.
//! The bridge does so until the response comes, delivering the messages on the way
//! in order, so its stdio client sees one answer as from an unbroken stream.
//!
//! 2026-07-28 dropped resumption ("Resumable SSE streams via `Last-Event-ID` are not
//! supported"): a request of that revision or later is not resumed.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use super::{Answered, Bridge, DEFAULT_RETRY};
use crate::proxy::sse;

/// How many resumptions in a row may bring nothing new (a refused GET, a failed
/// connection, a stream without a new event) before the request is answered with an
/// error. A resumption that brings a new event starts the count again: a server that
/// polls (closes each connection after a while, for as long as its work takes) is
/// followed as long as it moves, as an open stream would be waited on. One that lost
/// the stream (a restart, an expired session, no GET at all) is given up on after three
/// tries at its own `retry` pace, a few seconds, instead of never: one try would give up
/// on a server that was restarting, and more would only keep the client waiting.
const MAX_IDLE_RESUMES: u32 = 3;

/// The longest reconnection delay taken from a server (a `retry` field is network
/// input): a minute.
const MAX_RETRY_MS: u64 = 60_000;

/// How many of a stream's newest event ids are kept to know a repeated event: enough
/// for any replay from near where the stream broke, and all a server's endless stream
/// of events can make the bridge hold.
const REMEMBERED: usize = 1024;

/// The first revision without resumption.
const WITHOUT_RESUMPTION: &str = "2026-07-28";

/// A `retry` field as a delay, bounded.
pub(super) fn retry_delay(ms: u64) -> Duration {
    Duration::from_millis(ms.min(MAX_RETRY_MS))
}

/// Where a request's stream is, across its connections.
#[derive(Debug)]
pub(super) struct Cursor {
    /// The newest event ids received, newest last (where a resumption starts).
    recent: VecDeque<String>,
    /// The same ids, to look up: an event that comes again (a server that replays the
    /// event `Last-Event-ID` names, or more) is not delivered twice.
    seen: HashSet<String>,
    /// How many events with a new id came, to tell a resumption that brought some.
    fresh: u64,
    /// The reconnection delay: the newest `retry` field (SSE: it holds for every later
    /// connection), else the default.
    retry: Duration,
    /// Resumptions made.
    resumed: u32,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            recent: VecDeque::new(),
            seen: HashSet::new(),
            fresh: 0,
            retry: DEFAULT_RETRY,
            resumed: 0,
        }
    }
}

impl Cursor {
    /// Notes an event's `id` and `retry`. False for an event already received, which
    /// is then not to be delivered.
    pub(super) fn note(&mut self, event: &sse::Event<'_>) -> bool {
        if let Some(retry) = event.retry {
            self.retry = retry_delay(retry);
        }
        // An empty id names no event to resume after.
        let Some(id) = event.id.filter(|id| !id.is_empty()) else {
            return true;
        };
        if self.seen.contains(id) {
            return false;
        }
        if self.recent.len() == REMEMBERED
            && let Some(oldest) = self.recent.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(id.to_owned());
        self.recent.push_back(id.to_owned());
        self.fresh += 1;
        true
    }

    /// The newest event id received.
    fn last(&self) -> Option<&str> {
        self.recent.back().map(String::as_str)
    }

    /// Whether the stream is on a resumed connection, which ends with the response.
    pub(super) fn resuming(&self) -> bool {
        self.resumed > 0
    }

    /// How many resumptions were made.
    pub(super) fn resumed(&self) -> u32 {
        self.resumed
    }
}

/// Whether the request these headers go with may be resumed: a revision before
/// 2026-07-28 (versions are dates, so they compare as text), or none named.
fn resumable(headers: &HeaderMap) -> bool {
    headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v < WITHOUT_RESUMPTION)
}

impl Bridge {
    /// Resumes the stream of `message` after it ended without the response, until the
    /// response comes, the stream cannot be resumed, or `MAX_IDLE_RESUMES` resumptions
    /// in a row brought nothing. Whatever comes is delivered as the original stream's
    /// events would have been.
    pub(super) async fn resume(
        &self,
        message: &Value,
        answered: &mut Answered,
        initialize: bool,
        cursor: &mut Cursor,
    ) {
        let mut idle = 0;
        while !answered.done && idle < MAX_IDLE_RESUMES {
            let Some(last) = cursor.last().and_then(|id| HeaderValue::from_str(id).ok()) else {
                // No id, or one HTTP cannot carry: nothing to resume from.
                return;
            };
            // The session id and protocol version as for any request; no mirrored
            // headers, which belong to the POST.
            let mut request = self.request(Method::GET, Body::empty(), Some(message));
            if !resumable(request.headers()) {
                return;
            }
            request.headers_mut().insert("last-event-id", last);
            tokio::select! {
                () = tokio::time::sleep(cursor.retry) => {}
                () = self.stop.cancelled() => return,
            }
            cursor.resumed += 1;
            let response = tokio::select! {
                response = self.send(request) => response,
                () = self.stop.cancelled() => return,
            };
            let before = cursor.fresh;
            let status = response.status();
            if status.is_success() && super::is_event_stream(response.headers()) {
                self.relay_stream(response.into_body(), message, answered, initialize, cursor)
                    .await;
            } else {
                tracing::debug!(server = %self.server, %status, "resuming a request's stream was refused");
            }
            idle = if cursor.fresh > before { 0 } else { idle + 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_keeps_the_newest_id_and_retry_and_knows_what_it_has_seen() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.retry, DEFAULT_RETRY);
        assert!(cursor.note(&sse::parse_event("id: a\nretry: 500\ndata: ")));
        assert!(cursor.note(&sse::parse_event("data: {}")), "no id");
        assert!(cursor.note(&sse::parse_event("id: b\ndata: {}")));
        assert_eq!(
            (cursor.last(), cursor.retry),
            (Some("b"), Duration::from_millis(500))
        );
        assert!(
            !cursor.note(&sse::parse_event("id: b\nretry: 999999999\ndata: {}")),
            "already delivered"
        );
        assert_eq!(cursor.retry, Duration::from_secs(60), "bounded");
        assert_eq!(cursor.last(), Some("b"));
    }

    #[test]
    fn the_cursor_remembers_a_bounded_number_of_ids() {
        let mut cursor = Cursor::default();
        for n in 0..REMEMBERED + 10 {
            assert!(cursor.note(&sse::parse_event(&format!("id: {n}\ndata: {{}}"))));
        }
        assert_eq!(
            (cursor.seen.len(), cursor.recent.len()),
            (REMEMBERED, REMEMBERED)
        );
        let newest = (REMEMBERED + 9).to_string();
        assert_eq!(cursor.last(), Some(newest.as_str()));
        assert!(!cursor.note(&sse::parse_event("id: 10\ndata: {}")), "kept");
        assert!(
            cursor.note(&sse::parse_event("id: 9\ndata: {}")),
            "forgotten"
        );
    }

    #[test]
    fn requests_of_2026_07_28_and_later_are_not_resumed() {
        let with = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("mcp-protocol-version", HeaderValue::from_static(v));
            resumable(&headers)
        };
        assert!(with("2025-11-25") && with("2025-03-26"));
        assert!(!with("2026-07-28"));
        assert!(resumable(&HeaderMap::new()));
    }
}
