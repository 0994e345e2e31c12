//! Key URLs (`local_key = true`; README, "Security"). The local endpoint attaches
//! the user's credentials to what it forwards, so only the user's own processes may
//! use it (`peer.rs`). Where that cannot be checked (another OS, a container that
//! hides `/proc/net/tcp`), or for a client that must run as another user, a server
//! can be served at a capability URL instead, `http://127.0.0.1:PORT/k/<key>/<name>`:
//! whoever has the URL may use that server, and no one else, whatever their UID.
//!
//! Each keyed server has its own key, 256 random bits, kept in the credential store
//! in a record of its own (so a logout leaves the URL working). `latchkey url NAME`
//! prints the URL and `--new` replaces the key; a running daemon reads the keys at
//! start and at every reload. A plain `/<name>` request to a keyed server is refused,
//! even from the user: the key is then the only way in. Keys are compared in constant
//! time, and never reach a log line (the front strips the key from the path before
//! anything logs it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};

use axum::extract::Request;
use http::Uri;
use http::uri::PathAndQuery;
use latchkey_auth::Secret;
use latchkey_auth::session::Credentials;
use latchkey_auth::store::{FlowLock, Record};

use crate::error::ProxyError;

/// The first path segment of every key URL, so no server may have it as its name.
pub const RESERVED_NAME: &str = "k";
const PREFIX: &str = "/k/";
/// 32 random bytes, 43 characters of URL-safe base64.
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or store the key of server {server:?}'s URL: {cause}")]
    Store { server: String, cause: String },
}

/// The key a request's URL presented, taken from its path by [`strip`].
#[derive(Debug, Clone)]
pub(crate) struct Presented(Secret);

/// A keyed server's key as a running daemon holds it: loaded at start and at each
/// reload, or why it could not be.
#[derive(Debug, Default)]
pub(crate) struct Held(Mutex<Option<Result<Secret, String>>>);

impl Held {
    fn set(&self, key: Result<Secret, String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }
}

/// Moves a key URL's key from the request's path into its extensions:
/// `/k/<key>/<name>` and `/k/<key>/<name>/messages/<token>` lose their `/k/<key>`.
/// Whether it did: any other path is left alone (and under `/k/` is then refused as
/// an unknown server). Only server paths can be reached this way, never latchkey's
/// own pages, as a server name never starts with '.'.
pub(crate) fn strip(request: &mut Request) -> bool {
    let Some(rest) = request.uri().path().strip_prefix(PREFIX) else {
        return false;
    };
    let Some((key, path)) = rest.split_once('/') else {
        return false;
    };
    let name = path.split('/').next().unwrap_or_default();
    let server_path = match path.strip_prefix(name) {
        Some("") => true,
        Some(legacy) => legacy
            .strip_prefix("/messages/")
            .is_some_and(|token| !token.is_empty() && !token.contains('/')),
        None => false,
    };
    let plain = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !server_path || !plain(key) || !plain(name) || name.starts_with('.') {
        return false;
    }
    let key = Secret::new(key);
    let path = match request.uri().query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    let Ok(path) = PathAndQuery::try_from(path) else {
        return false;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path);
    let Ok(uri) = Uri::from_parts(parts) else {
        return false;
    };
    *request.uri_mut() = uri;
    request.extensions_mut().insert(Presented(key));
    true
}

/// Whether a request that presented `presented` may use server `name`, whose key is
/// `held` if it is keyed: a keyed server takes only its own key, and a server that
/// is not keyed takes no key (a wrong or stray key admits no one).
pub(crate) fn admit(
    name: &str,
    held: Option<&Held>,
    presented: Option<&Presented>,
) -> Result<(), ProxyError> {
    match (held, presented) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(ProxyError::Forbidden(format!(
            "server {name:?} has no key URL; use /{name}, or set local_key = true in [servers.{name}] and run `latchkey url {name}`"
        ))),
        (Some(_), None) => Err(ProxyError::Forbidden(format!(
            "server {name:?} is served only at its key URL (local_key = true); `latchkey url {name}` prints it"
        ))),
        (Some(held), Some(Presented(candidate))) => {
            let held = held.0.lock().unwrap_or_else(PoisonError::into_inner);
            match held.as_ref() {
                Some(Ok(key)) if key.matches(candidate.expose()) => Ok(()),
                Some(Ok(_)) => {
                    tracing::warn!(server = %name, "refused a request with a wrong key in its URL");
                    Err(ProxyError::Forbidden(format!(
                        "wrong key for server {name:?}; `latchkey url {name}` prints its URL"
                    )))
                }
                Some(Err(cause)) => Err(ProxyError::LocalKey {
                    server: name.to_owned(),
                    cause: cause.clone(),
                }),
                None => Err(ProxyError::LocalKey {
                    server: name.to_owned(),
                    cause: "it is still being loaded".into(),
                }),
            }
        }
    }
}

/// The local path a request for server `name` came in at.
pub(crate) fn path(name: &str, presented: Option<&Presented>) -> String {
    match presented {
        Some(Presented(key)) => format!("{PREFIX}{}/{name}", key.expose()),
        None => format!("/{name}"),
    }
}

/// Loads the key of each keyed server into `held`, all at once.
pub(crate) async fn load_all<'a>(
    credentials: &Credentials,
    keyed: impl Iterator<Item = (&'a str, &'a Held)>,
) {
    let loads = keyed.map(|(name, held)| async move {
        let key = load(credentials, name, false).await;
        if let Err(e) = &key {
            tracing::error!(server = %name, error = %e, "cannot load the key of the server's URL");
        }
        held.set(key.map_err(|e| e.to_string()));
    });
    futures_util::future::join_all(loads).await;
}

/// The key of server `name`'s URL: the stored one, or a new one (stored first) if
/// there is none or `replace` is set. Under a machine-wide lock of its own, so that
/// two processes that make a key at once agree on it.
pub async fn load(
    credentials: &Credentials,
    name: &str,
    replace: bool,
) -> Result<Secret, KeyError> {
    let (store, lock_dir) = (credentials.store.clone(), credentials.lock_dir.clone());
    let server = name.to_owned();
    let failed = |cause: String| KeyError::Store {
        server: name.to_owned(),
        cause,
    };
    tokio::task::spawn_blocking(move || {
        // Not a URL, so no session's record can have it.
        let id = format!("latchkey:local-key:{server}");
        let _lock = lock_dir
            .as_deref()
            .map(|dir| FlowLock::acquire(dir, &id))
            .transpose()?;
        let stored = store
            .load(&id, &server)
            .map_err(|e| e.to_string())?
            .and_then(|record| record.local_key);
        if let Some(key) = stored.filter(|_| !replace) {
            return Ok(key);
        }
        let key = latchkey_auth::authorize::random_secret(KEY_BYTES);
        let record = Record {
            local_key: Some(key.clone()),
            ..Record::default()
        };
        store.save(&id, &record).map_err(|e| e.to_string())?;
        Ok(key)
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(failed)
}

/// Where a daemon listening on `listen` is reached: on loopback when it listens on
/// every address (the guard refuses an unspecified address as a Host).
pub(crate) fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// Server `name`'s URL on a daemon that listens on `listen`: its key URL if it has
/// a key.
pub fn url(listen: SocketAddr, name: &str, key: Option<&Secret>) -> String {
    let address = reachable(listen);
    match key {
        Some(key) => format!("http://{address}{PREFIX}{}/{name}", key.expose()),
        None => format!("http://{address}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(uri: &str) -> Option<(String, String)> {
        let mut request = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .expect("request");
        strip(&mut request).then(|| {
            let Presented(key) = request
                .extensions()
                .get::<Presented>()
                .expect("key")
                .clone();
            (key.expose().to_owned(), request.uri().to_string())
        })
    }

    #[test]
    fn only_server_paths_lose_their_key() {
        assert_eq!(
            stripped("/k/abc_-1/notes?x=1"),
            Some(("abc_-1".into(), "/notes?x=1".into()))
        );
        assert_eq!(
            stripped("/k/abc/notes/messages/t0k"),
            Some(("abc".into(), "/notes/messages/t0k".into()))
        );
        for other in [
            "/notes",
            "/k/abc",
            "/k/abc/",
            "/k//notes",
            "/k/abc/.latchkey/login/notes",
            "/k/abc/notes/other",
            "/k/abc/notes/messages/",
            "/k/abc/notes/messages/a/b",
            "/k/a%2Fb/notes",
        ] {
            assert_eq!(stripped(other), None, "{other}");
        }
    }

    #[test]
    fn a_keyed_server_takes_only_its_key() {
        let held = Held::default();
        held.set(Ok(Secret::new("right")));
        let right = Presented(Secret::new("right"));
        let wrong = Presented(Secret::new("wrong"));
        assert!(admit("a", None, None).is_ok());
        assert!(admit("a", Some(&held), Some(&right)).is_ok());
        for (held, presented) in [
            (Some(&held), None),
            (Some(&held), Some(&wrong)),
            (None, Some(&right)),
        ] {
            let refused = admit("a", held, presented).expect_err("refused");
            assert!(refused.to_string().contains("latchkey url a"), "{refused}");
        }
        let failed = Held::default();
        failed.set(Err("the keyring is locked".into()));
        let refused = admit("a", Some(&failed), Some(&right)).expect_err("refused");
        assert!(
            refused.to_string().contains("keyring is locked"),
            "{refused}"
        );
    }

    #[test]
    fn urls_are_on_loopback() {
        let key = Secret::new("K");
        let any: SocketAddr = "0.0.0.0:8931".parse().expect("addr");
        assert_eq!(url(any, "a", Some(&key)), "http://127.0.0.1:8931/k/K/a");
        let own: SocketAddr = "[::1]:9".parse().expect("addr");
        assert_eq!(url(own, "a", None), "http://[::1]:9/a");
    }
}
