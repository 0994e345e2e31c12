//! latchkey: a local reverse proxy that serves remote MCP servers on
//! `http://127.0.0.1:PORT/<server>` and adds the upstream credentials.
//!
//! The binary (`main.rs`) parses the command line and calls into this library:
//! [`config::load`] reads the config, and [`daemon::run`] serves it on a listener
//! until a shutdown future completes.

pub mod callback;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
mod desktop;
mod error;
mod guard;
pub mod local_key;
pub mod login;
pub mod notify;
pub mod onboard;
pub mod out;
pub mod peer;
mod proxy;
pub mod redact;
pub mod report;
mod server;
pub mod service;
pub mod snippets;
mod status;
pub mod stdio;
pub mod telemetry;

pub use redact::redacted;

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by
/// default): the SSE and config parsers, which live in private modules. Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::error::Error;

    use bytes::Bytes;
    use futures_util::Stream;

    pub use crate::proxy::sse::{Blocks, Event, parse_event};
    pub use crate::proxy::sse_endpoint::LegacyEndpoints;

    /// The legacy `endpoint` rewriter over `inner`, a stream that came from `base`.
    pub fn endpoint_rewriter<S, E>(
        inner: S,
        base: url::Url,
        server: &str,
        endpoints: LegacyEndpoints,
    ) -> impl Stream<Item = Result<Bytes, Box<dyn Error + Send + Sync>>> + Unpin
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        let local = format!("/{server}");
        crate::proxy::sse_endpoint::EndpointRewriter::new(inner, base, server, local, endpoints)
    }

    /// `${VAR}` substitution in a configured header value.
    pub fn substitute_env(
        raw: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<latchkey_auth::Secret, String> {
        crate::config::substitute_env(raw, env)
    }
}
