//! Finding the authorization server for an MCP server, as the MCP authorization spec
//! (2025-06-18 and later, with the 2025-03-26 fallbacks) prescribes.
//!
//! Written here rather than taken from rmcp's `auth` module because that module
//! deviates where it matters: it only warns when PKCE is not advertised (the spec says
//! refuse), tries discovery URLs the spec does not list, and relaxes the issuer
//! comparison. Each rule below cites the spec or RFC it comes from.
//!
//! 1. Protected resource metadata (RFC 9728): the `resource_metadata` URL from the
//!    401's `WWW-Authenticate`, else `/.well-known/oauth-protected-resource/<path>`,
//!    else `/.well-known/oauth-protected-resource` at the server's origin.
//! 2. Authorization server metadata for its first `authorization_servers` entry:
//!    RFC 8414 and OpenID Connect discovery URLs in the spec's order. The document's
//!    `issuer` must be exactly the issuer the URL was built from.
//! 3. No protected resource metadata at all (a 2025-03-26 server): metadata at the
//!    server's origin, else the default `/authorize`, `/token` and `/register`.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::challenge::BearerChallenge;
use crate::target::{Http, SendError, shown};

/// Metadata documents are small; a bigger one is refused rather than read.
const MAX_DOCUMENT: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// RFC 9728 §2: what the protected resource says about itself.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ResourceMetadata {
    pub resource: String,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Option<Vec<String>>,
    /// RFC 9728 §2: the resource takes DPoP-bound tokens only.
    #[serde(default)]
    pub dpop_bound_access_tokens_required: bool,
    /// RFC 9728 §2: the resource takes DPoP proofs in these algorithms.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// RFC 8414 §2 (and the OpenID Connect discovery fields that share its names).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ServerMetadata {
    pub issuer: String,
    /// Required by RFC 8414 unless the server has no grant that uses it (a
    /// client-credentials-only server).
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub registration_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    pub code_challenge_methods_supported: Option<Vec<String>>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    pub grant_types_supported: Option<Vec<String>>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    /// RFC 9207 §3.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// OpenID Connect Discovery 1.0 §3: required of an OpenID provider, so its
    /// presence says the server is one (and drops `offline_access` without
    /// `prompt=consent`).
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
    /// OpenID Connect Prompt Create 1.0 §4.
    pub prompt_values_supported: Option<Vec<String>>,
    /// RFC 9449 §5.1: the server takes DPoP proofs in these algorithms.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// Everything the authorization flow needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The RFC 8707 resource indicator: the protected resource metadata's `resource`,
    /// else the server's canonical URI.
    pub resource: String,
    /// `None` for a 2025-03-26 server that publishes no resource metadata.
    pub resource_metadata: Option<ResourceMetadata>,
    /// Where the resource metadata was found, so a later run (after a restart, with
    /// no 401 to learn it from) can look there first.
    pub resource_metadata_url: Option<Url>,
    pub server: ServerMetadata,
    /// How `server` was found, for `status` and error messages.
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fetched from this URL.
    Metadata(Url),
    /// The 2025-03-26 default endpoints at the server's origin.
    DefaultEndpoints,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Retryable: nothing was learned, and nothing stored should change.
    #[error("cannot fetch {url}: {cause}; check the network, then retry")]
    Network { url: String, cause: String },
    #[error("{url} is not a usable {what}: {cause}")]
    Invalid {
        url: String,
        what: &'static str,
        cause: String,
    },
    #[error(
        "the protected resource metadata at {url} describes {found:?}, not this server ({expected:?}); refusing it (RFC 9728 §3.3)"
    )]
    ResourceMismatch {
        url: String,
        found: String,
        expected: String,
    },
    #[error(
        "the protected resource metadata at {url} lists no authorization_servers; the server cannot be used with OAuth (set oauth = false and configure headers instead)"
    )]
    NoAuthorizationServer { url: String },
    #[error(
        "the metadata at {url} names issuer {found:?}, but it was looked up for {expected:?}; refusing it (RFC 8414 §3.3)"
    )]
    IssuerMismatch {
        url: String,
        found: String,
        expected: String,
    },
    #[error(
        "{what} {url} does not use HTTPS; only loopback addresses may use plain HTTP (MCP authorization, Communication Security)"
    )]
    Insecure { what: &'static str, url: String },
    #[error(
        "the authorization server {issuer} does not advertise PKCE with S256 (code_challenge_methods_supported); the MCP authorization spec requires refusing to continue"
    )]
    NoPkce { issuer: String },
    #[error("no authorization server metadata for {issuer}; tried {tried}")]
    NoServerMetadata { issuer: String, tried: String },
    #[error(transparent)]
    Target(#[from] crate::target::Refused),
}

impl DiscoveryError {
    /// Whether trying again later may succeed without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Network { .. })
    }
}

/// The canonical URI of an MCP server (MCP authorization, Canonical Server URI):
/// lower-case scheme and host, no fragment, no trailing slash.
pub fn canonical_resource(server: &Url) -> String {
    let mut url = server.clone();
    url.set_fragment(None);
    // RFC 8707 §2: the indicator SHOULD NOT have a query; a server URL's query is
    // often an API key, which must not travel to the authorization server or stand
    // in the store's keys.
    url.set_query(None);
    let text = url.to_string();
    match text.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => text,
    }
}

/// Whether a URL may be used for OAuth traffic: HTTPS, or HTTP to a loopback host.
pub fn is_secure(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Runs discovery for `server` after a 401 that carried `challenge` (if any).
pub async fn discover(
    http: &Http,
    server: &Url,
    challenge: Option<&BearerChallenge>,
) -> Result<Discovered, DiscoveryError> {
    let expected = canonical_resource(server);
    let Some((prm_url, prm)) = resource_metadata(http, server, challenge).await? else {
        return legacy(http, server, expected).await;
    };
    if !covers(&prm.resource, &expected) {
        return Err(DiscoveryError::ResourceMismatch {
            url: shown(prm_url.as_str()),
            found: prm.resource,
            expected,
        });
    }
    let issuer = prm
        .authorization_servers
        .first()
        .ok_or_else(|| DiscoveryError::NoAuthorizationServer {
            url: shown(prm_url.as_str()),
        })?
        .clone();
    let (source, server_metadata) = server_metadata(http, &issuer).await?;
    validate(&server_metadata)?;
    Ok(Discovered {
        resource: prm.resource.clone(),
        resource_metadata: Some(prm),
        resource_metadata_url: Some(prm_url),
        server: server_metadata,
        source: Source::Metadata(source),
    })
}

/// Whether a resource identifier from metadata stands for `expected`: the same URI, or
/// (for metadata served at the origin's root) a parent path on the same origin.
pub(crate) fn covers(resource: &str, expected: &str) -> bool {
    let resource = resource.trim_end_matches('/');
    if resource == expected {
        return true;
    }
    let (Ok(r), Ok(e)) = (Url::parse(resource), Url::parse(expected)) else {
        return false;
    };
    r.origin() == e.origin()
        && r.query().is_none()
        && (r.path() == "/"
            || e.path()
                .starts_with(&format!("{}/", r.path().trim_end_matches('/'))))
}

async fn resource_metadata(
    http: &Http,
    server: &Url,
    challenge: Option<&BearerChallenge>,
) -> Result<Option<(Url, ResourceMetadata)>, DiscoveryError> {
    let mut candidates = Vec::new();
    if let Some(url) = challenge.and_then(|c| c.resource_metadata.as_deref()) {
        let url = Url::parse(url).map_err(|e| DiscoveryError::Invalid {
            url: shown(url),
            what: "resource_metadata URL",
            cause: e.to_string(),
        })?;
        candidates.push(url);
    }
    let path = server.path().trim_end_matches('/');
    if !path.is_empty() {
        candidates.push(well_known(server, "oauth-protected-resource", path));
    }
    candidates.push(well_known(server, "oauth-protected-resource", ""));
    for url in candidates {
        if !is_secure(&url) {
            return Err(DiscoveryError::Insecure {
                what: "protected resource metadata URL",
                url: shown(url.as_str()),
            });
        }
        if let Some(document) =
            fetch::<ResourceMetadata>(http, &url, "protected resource metadata").await?
        {
            return Ok(Some((url, document)));
        }
    }
    Ok(None)
}

/// `scheme://host[:port]/.well-known/<name><suffix>`.
fn well_known(base: &Url, name: &str, suffix: &str) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.set_path(&format!("/.well-known/{name}{suffix}"));
    url
}

/// The metadata URLs for an issuer, in the spec's order.
pub fn server_metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    if path.is_empty() {
        vec![
            well_known(issuer, "oauth-authorization-server", ""),
            well_known(issuer, "openid-configuration", ""),
        ]
    } else {
        let mut appended = issuer.clone();
        appended.set_query(None);
        appended.set_path(&format!("{path}/.well-known/openid-configuration"));
        vec![
            well_known(issuer, "oauth-authorization-server", path),
            well_known(issuer, "openid-configuration", path),
            appended,
        ]
    }
}

/// An authorization server's metadata, fetched from its issuer and checked: for a
/// refresh or revocation at the issuer that issued a record's tokens.
pub async fn authorization_server(
    http: &Http,
    issuer: &str,
) -> Result<ServerMetadata, DiscoveryError> {
    let (_, metadata) = server_metadata(http, issuer).await?;
    validate(&metadata)?;
    Ok(metadata)
}

async fn server_metadata(
    http: &Http,
    issuer: &str,
) -> Result<(Url, ServerMetadata), DiscoveryError> {
    let issuer_url = Url::parse(issuer).map_err(|e| DiscoveryError::Invalid {
        url: shown(issuer),
        what: "authorization server issuer",
        cause: e.to_string(),
    })?;
    if !is_secure(&issuer_url) {
        return Err(DiscoveryError::Insecure {
            what: "authorization server",
            url: shown(issuer),
        });
    }
    let urls = server_metadata_urls(&issuer_url);
    for url in &urls {
        if let Some(document) =
            fetch::<ServerMetadata>(http, url, "authorization server metadata").await?
        {
            if document.issuer != issuer {
                return Err(DiscoveryError::IssuerMismatch {
                    url: shown(url.as_str()),
                    found: document.issuer,
                    expected: issuer.to_owned(),
                });
            }
            return Ok((url.clone(), document));
        }
    }
    Err(DiscoveryError::NoServerMetadata {
        issuer: issuer.to_owned(),
        tried: urls.iter().map(Url::as_str).collect::<Vec<_>>().join(", "),
    })
}

/// A 2025-03-26 server: the authorization server is the MCP server's origin.
async fn legacy(http: &Http, server: &Url, resource: String) -> Result<Discovered, DiscoveryError> {
    let url = well_known(server, "oauth-authorization-server", "");
    let origin = url.origin().ascii_serialization();
    if let Some(document) =
        fetch::<ServerMetadata>(http, &url, "authorization server metadata").await?
    {
        // The 2025-03-26 revision has no issuer rule: the document found at the
        // server's origin is its authorization server, whatever issuer it names (such
        // as the origin plus a path). Its endpoints are still checked below.
        validate(&document)?;
        return Ok(Discovered {
            resource,
            resource_metadata: None,
            resource_metadata_url: None,
            server: document,
            source: Source::Metadata(url),
        });
    }
    let server_metadata = ServerMetadata {
        issuer: origin.clone(),
        authorization_endpoint: Some(format!("{origin}/authorize")),
        token_endpoint: format!("{origin}/token"),
        registration_endpoint: Some(format!("{origin}/register")),
        // The 2025-03-26 revision makes PKCE mandatory for every server.
        code_challenge_methods_supported: Some(vec!["S256".to_owned()]),
        ..ServerMetadata::default()
    };
    validate(&server_metadata)?;
    Ok(Discovered {
        resource,
        resource_metadata: None,
        resource_metadata_url: None,
        server: server_metadata,
        source: Source::DefaultEndpoints,
    })
}

/// The checks every authorization server must pass before any request goes to it.
pub(crate) fn validate(metadata: &ServerMetadata) -> Result<(), DiscoveryError> {
    let endpoints = [
        (
            "authorization_endpoint",
            metadata.authorization_endpoint.as_ref(),
        ),
        ("token_endpoint", Some(&metadata.token_endpoint)),
        (
            "registration_endpoint",
            metadata.registration_endpoint.as_ref(),
        ),
        (
            "device_authorization_endpoint",
            metadata.device_authorization_endpoint.as_ref(),
        ),
        ("revocation_endpoint", metadata.revocation_endpoint.as_ref()),
    ];
    for (what, url) in endpoints {
        let Some(url) = url else { continue };
        let parsed = Url::parse(url).map_err(|e| DiscoveryError::Invalid {
            url: shown(url),
            what,
            cause: e.to_string(),
        })?;
        if !is_secure(&parsed) {
            return Err(DiscoveryError::Insecure {
                what,
                url: shown(url),
            });
        }
    }
    Ok(())
}

/// The authorization-code flow's precondition: the MCP spec requires refusing to go
/// on unless the server advertises PKCE with S256. (The client-credentials grant has
/// no authorization request, so it does not ask.)
pub fn require_pkce(metadata: &ServerMetadata) -> Result<(), DiscoveryError> {
    let pkce = metadata
        .code_challenge_methods_supported
        .as_ref()
        .is_some_and(|methods| methods.iter().any(|m| m == "S256"));
    if pkce {
        Ok(())
    } else {
        Err(DiscoveryError::NoPkce {
            issuer: metadata.issuer.clone(),
        })
    }
}

/// GETs a JSON document. `Ok(None)` means "not here" (any non-200 status), so the
/// caller tries the next URL; a transport failure is an error.
async fn fetch<T: serde::de::DeserializeOwned>(
    http: &Http,
    url: &Url,
    what: &'static str,
) -> Result<Option<T>, DiscoveryError> {
    let network = |e: reqwest::Error| DiscoveryError::Network {
        url: shown(url.as_str()),
        cause: e.without_url().to_string(),
    };
    let response = http
        .send(what, url.as_str(), |client| {
            client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(FETCH_TIMEOUT)
        })
        .await
        .map_err(|e| match e {
            SendError::Refused(refused) => DiscoveryError::Target(refused),
            SendError::Network(e) => network(e),
        })?;
    let status = response.status();
    // An outage is not an absence: going on to the next URL (or the 2025-03-26
    // defaults) would pick the wrong authorization server.
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(DiscoveryError::Network {
            url: shown(url.as_str()),
            cause: format!("HTTP {status}"),
        });
    }
    if status != reqwest::StatusCode::OK {
        return Ok(None);
    }
    let body = match crate::body::read(response, MAX_DOCUMENT).await {
        Ok(body) => body,
        Err(crate::body::BodyError::Network(e)) => return Err(network(e)),
        Err(e @ crate::body::BodyError::TooLarge { .. }) => {
            return Err(DiscoveryError::Invalid {
                url: shown(url.as_str()),
                what,
                cause: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| DiscoveryError::Invalid {
            url: shown(url.as_str()),
            what,
            cause: e.to_string(),
        })
}
