//! Which OAuth client latchkey is at an authorization server, in the MCP spec's
//! priority order (MCP authorization, Client Registration Approaches):
//!
//! 1. a client the user configured (`client_id`, maybe a secret);
//! 2. a client ID metadata document (an HTTPS URL as the `client_id`), when the server
//!    advertises `client_id_metadata_document_supported`;
//! 3. RFC 7591 dynamic client registration, when there is a `registration_endpoint`;
//! 4. otherwise nothing: the user must register a client and configure it.
//!
//! A registration belongs to the issuer it was made at.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::Secret;
use crate::assertion::SigningKey;
use crate::discovery::ServerMetadata;
use crate::target::{FetchError, Http};
use crate::token::{ClientAuth, ClientCredentials};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A client from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredClient {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// For `private_key_jwt`; takes precedence over a secret.
    pub private_key: Option<Arc<SigningKey>>,
}

impl ConfiguredClient {
    /// Whether it has a credential (a secret or a key) that must only go to its own
    /// authorization server.
    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some() || self.private_key.is_some()
    }
}

/// A client as latchkey uses it at one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub issuer: String,
    pub client_id: String,
    pub auth: ClientAuth,
    pub redirect_uri: String,
    /// RFC 7592, when the server returned one.
    pub registration_access_token: Option<Secret>,
}

impl Registration {
    pub fn credentials(&self) -> ClientCredentials {
        ClientCredentials {
            client_id: self.client_id.clone(),
            auth: self.auth.clone(),
            issuer: self.issuer.clone(),
        }
    }
}

/// How to get a client at this server, before any network traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Ready(Registration),
    /// POST to this registration endpoint.
    Dynamic {
        endpoint: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "the authorization server {issuer} offers neither client ID metadata documents nor dynamic client registration; register a client there and set client_id (and client_secret, if it has one) under [servers.{server}.oauth]"
    )]
    NeedsClientRegistration { issuer: String, server: String },
    #[error("cannot reach the registration endpoint: {cause}; check the network, then retry")]
    Network { cause: String },
    #[error("dynamic client registration failed with HTTP {status}{}; set client_id under [servers.{server}.oauth] to use a client registered by hand", .error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused {
        status: u16,
        error: Option<String>,
        server: String,
    },
    #[error("the registration response is unusable: {cause}")]
    Malformed { cause: String },
    #[error(transparent)]
    Target(#[from] crate::target::Refused),
}

impl RegistrationError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Network { .. })
            || matches!(self, Self::Refused { status, .. } if *status >= 500)
    }
}

/// Picks the registration approach. `server` is the config's name for the MCP server,
/// used in messages.
pub fn plan(
    server: &str,
    metadata: &ServerMetadata,
    configured: Option<&ConfiguredClient>,
    metadata_document: Option<&str>,
    redirect_uri: &str,
) -> Result<Plan, RegistrationError> {
    let ready = |client_id: &str, auth| {
        Plan::Ready(Registration {
            issuer: metadata.issuer.clone(),
            client_id: client_id.to_owned(),
            auth,
            redirect_uri: redirect_uri.to_owned(),
            registration_access_token: None,
        })
    };
    // An empty client_id counts as none.
    if let Some(client) = configured.filter(|c| !c.client_id.trim().is_empty()) {
        let auth = match (&client.private_key, &client.client_secret) {
            (Some(key), _) => ClientAuth::PrivateKeyJwt(key.clone()),
            (None, Some(secret)) => secret_auth(metadata, secret.clone()),
            (None, None) => ClientAuth::None,
        };
        return Ok(ready(&client.client_id, auth));
    }
    if let Some(url) = metadata_document.filter(|_| metadata.client_id_metadata_document_supported)
    {
        return Ok(ready(url, ClientAuth::None));
    }
    if let Some(endpoint) = &metadata.registration_endpoint {
        return Ok(Plan::Dynamic {
            endpoint: endpoint.clone(),
        });
    }
    Err(RegistrationError::NeedsClientRegistration {
        issuer: metadata.issuer.clone(),
        server: server.to_owned(),
    })
}

/// `client_secret_basic` unless the server lists only `client_secret_post` (RFC 8414
/// §2: an absent list means `client_secret_basic`).
fn secret_auth(metadata: &ServerMetadata, secret: Secret) -> ClientAuth {
    match &metadata.token_endpoint_auth_methods_supported {
        Some(methods)
            if !methods.iter().any(|m| m == "client_secret_basic")
                && methods.iter().any(|m| m == "client_secret_post") =>
        {
            ClientAuth::Post(secret)
        }
        _ => ClientAuth::Basic(secret),
    }
}

#[derive(Deserialize)]
struct RegistrationResponse {
    client_id: String,
    client_secret: Option<String>,
    token_endpoint_auth_method: Option<String>,
    registration_access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

/// RFC 7591 dynamic client registration as a native public client.
pub async fn register(
    http: &Http,
    server: &str,
    metadata: &ServerMetadata,
    endpoint: &str,
    redirect_uri: &str,
) -> Result<Registration, RegistrationError> {
    let mut grant_types = vec!["authorization_code", "refresh_token"];
    // Only where offered: a strict server refuses a registration asking for more.
    if metadata
        .grant_types_supported
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g == DEVICE_CODE))
    {
        grant_types.push(DEVICE_CODE);
    }
    let request = json!({
        "client_name": "latchkey",
        "redirect_uris": [redirect_uri],
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        // A loopback redirect makes this a native application (OpenID Connect DCR).
        "application_type": "native",
    });
    let (status, body) = http
        .fetch("registration endpoint", endpoint, |client| {
            client
                .post(endpoint)
                .json(&request)
                .timeout(REGISTER_TIMEOUT)
        })
        .await
        .map_err(|e| match e {
            FetchError::Refused(refused) => RegistrationError::Target(refused),
            FetchError::Network(cause) => RegistrationError::Network { cause },
            FetchError::TooLarge(cause) => RegistrationError::Malformed { cause },
        })?;
    if !status.is_success() {
        return Err(RegistrationError::Refused {
            status: status.as_u16(),
            error: serde_json::from_slice::<ErrorResponse>(&body)
                .ok()
                .map(|e| e.error),
            server: server.to_owned(),
        });
    }
    // The body may hold a client secret: errors must not quote it.
    let registered: RegistrationResponse =
        serde_json::from_slice(&body).map_err(|_| RegistrationError::Malformed {
            cause: "not a client information response (RFC 7591 §3.2.1)".into(),
        })?;
    if registered.client_id.trim().is_empty() {
        return Err(RegistrationError::Malformed {
            cause: "empty client_id".into(),
        });
    }
    let auth = match (
        registered.client_secret,
        registered.token_endpoint_auth_method.as_deref(),
    ) {
        (None, _) | (Some(_), Some("none")) => ClientAuth::None,
        (Some(secret), Some("client_secret_post")) => ClientAuth::Post(Secret::new(secret)),
        (Some(secret), _) => ClientAuth::Basic(Secret::new(secret)),
    };
    Ok(Registration {
        issuer: metadata.issuer.clone(),
        client_id: registered.client_id,
        auth,
        redirect_uri: redirect_uri.to_owned(),
        registration_access_token: registered.registration_access_token.map(Secret::new),
    })
}
