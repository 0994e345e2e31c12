//! Credentials for latchkey.
//!
//! This crate is the only place that holds upstream credentials, and it has no HTTP
//! server in it. Today it has the [`Secret`] type, which every credential-bearing value (static header values from the
//! config, and later OAuth tokens, codes, verifiers and client secrets) is wrapped in so
//! that it cannot reach a log, an error message or `Debug` output by accident, and the
//! `WWW-Authenticate` parser that OAuth discovery starts from.

pub mod assertion;
pub mod authorize;
mod body;
pub mod challenge;
pub mod device;
pub mod discovery;
pub mod dpop;
pub mod dpop_key;
pub mod enterprise;
pub mod jwt_bearer;
pub mod registration;
mod secret;
pub mod session;
pub mod store;
pub mod target;
pub mod token;

pub use challenge::BearerChallenge;
pub use secret::Secret;

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by
/// default): the pure parts of parsers that are otherwise reached only over HTTP.
/// Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::Secret;
    use crate::device::DeviceAuthorization;
    use crate::discovery::{DiscoveryError, ServerMetadata};
    use crate::token::{TokenError, TokenSet};

    /// Whether a protected resource metadata `resource` stands for `expected` (a
    /// server's canonical URI), as discovery decides it.
    pub fn covers(resource: &str, expected: &str) -> bool {
        crate::discovery::covers(resource, expected)
    }

    /// The endpoint checks authorization server metadata must pass.
    pub fn validate(metadata: &ServerMetadata) -> Result<(), DiscoveryError> {
        crate::discovery::validate(metadata)
    }

    /// A 2xx token response's body, as the grants read it.
    pub fn token_response(
        body: &[u8],
        old_refresh: Option<&Secret>,
        requested: &[String],
    ) -> Result<TokenSet, TokenError> {
        crate::token::parse_tokens(body).map(|t| t.into_set(old_refresh, requested))
    }

    /// A 4xx token endpoint response's body.
    pub fn token_error(status: u16, body: &[u8]) -> TokenError {
        let status =
            reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_REQUEST);
        crate::token::refusal(status, body)
    }

    /// A device authorization response's body.
    pub fn device_response(body: &[u8]) -> Result<DeviceAuthorization, TokenError> {
        crate::device::parse_response(body)
    }
}
