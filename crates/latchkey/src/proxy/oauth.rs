//! The proxy's side of OAuth: the token on each request, the wait for a login, and
//! keeping request bodies so that a request refused with 401 can be sent again.

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use latchkey_auth::session::{AuthStatus, Trigger};

use crate::error::ProxyError;
use crate::server::{LoginWait, Upstream, UpstreamAuth};

/// Request bodies up to this size are kept for a retry after a login; bigger ones
/// stream, and their client is asked to send them again.
const REPLAY_LIMIT: usize = 8 * 1024 * 1024;

impl UpstreamAuth {
    /// Waits for new tokens: up to the server's `auth_timeout` while the person can
    /// be reached, `login_wait` when not (see [`LoginWait`]). A login that outlasts
    /// the wait goes on; the next request after it gets through.
    pub(crate) async fn wait(
        &self,
        upstream: &Upstream,
        trigger: Trigger,
    ) -> Result<(), ProxyError> {
        let login = self.session.authorize(trigger);
        tokio::pin!(login);
        let done = |result: Result<(), latchkey_auth::session::AuthError>| {
            result.map_err(|e| ProxyError::Auth {
                server: upstream.config.name.clone(),
                message: e.message,
                command: upstream.config.login_command.clone(),
            })
        };
        tokio::select! {
            result = &mut login => return done(result),
            () = tokio::time::sleep(self.login_wait) => {}
        }
        // Only a person known to be out of reach ends the wait early: discovery, a
        // registration or an opener still trying may yet reach them.
        let unreached = matches!(
            self.session.status(),
            AuthStatus::Authorizing {
                reached: Some(false),
                ..
            }
        );
        if self.waits == LoginWait::WhileReached && !unreached {
            let rest = self.timeout.saturating_sub(self.login_wait);
            if let Ok(result) = tokio::time::timeout(rest, &mut login).await {
                return done(result);
            }
        }
        let authorizing = matches!(self.session.status(), AuthStatus::Authorizing { .. });
        // The start page is the daemon's: `latchkey stdio` has none.
        let sign_in = self
            .daemon
            .filter(|_| authorizing)
            .map(|addr| (addr, crate::server::login_path(&upstream.config.name)));
        Err(ProxyError::AuthTimeout {
            server: upstream.config.name.clone(),
            command: upstream.config.login_command.clone(),
            start_page: sign_in
                .as_ref()
                .map(|(addr, path)| format!("http://{addr}{path}")),
            sign_in: sign_in.map(|(_, path)| path),
        })
    }
}

/// A request body, kept whole when it is small enough to send twice.
#[derive(Debug)]
pub(crate) enum Payload {
    Whole(Bytes),
    Streaming(Body),
    /// A streaming body that was sent already.
    Spent,
}

impl Payload {
    /// Reads the body for an OAuth server (keeping it) or wraps it as a stream.
    pub(crate) async fn read(body: Body, keep: bool) -> Result<Self, ProxyError> {
        if !keep {
            return Ok(Self::Streaming(body));
        }
        let mut body = body;
        let mut kept: Vec<Bytes> = Vec::new();
        let mut size = 0;
        while size <= REPLAY_LIMIT {
            match body.frame().await {
                None => return Ok(Self::Whole(concat(kept))),
                Some(Err(_)) => {
                    return Err(ProxyError::BadRequest(
                        "the request body could not be read".into(),
                    ));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        size += data.len();
                        kept.push(data);
                    }
                }
            }
        }
        // Too big to keep: send what was read, then the rest, as one stream.
        let head = futures_util::stream::iter(kept.into_iter().map(Ok::<_, axum::Error>));
        Ok(Self::Streaming(Body::from_stream(
            head.chain(body.into_data_stream()),
        )))
    }

    /// The body for one attempt, and what is left for the next.
    pub(crate) fn split(self) -> (Body, Self) {
        match self {
            Self::Whole(bytes) => (Body::from(bytes.clone()), Self::Whole(bytes)),
            Self::Streaming(body) => (body, Self::Spent),
            Self::Spent => (Body::empty(), Self::Spent),
        }
    }

    pub(crate) fn into_body(self) -> Body {
        self.split().0
    }
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => chunks.concat().into(),
    }
}
