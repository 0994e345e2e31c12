//! The token endpoint (RFC 6749 §3.2): the authorization-code exchange, refresh and
//! the client-credentials grant, with `resource` (RFC 8707) on each.
//!
//! Written here rather than with the `oauth2` crate because latchkey must classify
//! every failure exactly (an `invalid_grant` clears the tokens, an `invalid_client`
//! means registering again, a timeout or a 5xx keeps everything), must accept the
//! token responses real servers send (`expires_in` as a string, no `scope`), and will
//! need `private_key_jwt`, which that crate does not support.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use url::form_urlencoded;

use crate::Secret;
use crate::assertion::{ASSERTION_TYPE, SigningKey};
use crate::dpop;
use crate::target::{FetchError, Http};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client authenticates at the token endpoint (RFC 7591 §2
/// `token_endpoint_auth_method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client: `client_id` in the body only.
    None,
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic(Secret),
    /// `client_secret_post`: the secret in the body.
    Post(Secret),
    /// `private_key_jwt`: a signed assertion in the body (RFC 7523 §2.2).
    PrivateKeyJwt(Arc<SigningKey>),
}

#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub auth: ClientAuth,
    /// The authorization server's issuer: the audience of a client assertion.
    pub issuer: String,
}

/// Tokens from a successful grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<SystemTime>,
    pub scopes: Vec<String>,
    /// `token_type` DPoP: the access token is bound to the installation's DPoP key
    /// and goes as `Authorization: DPoP`, with a proof (RFC 9449 §7.1).
    pub dpop: Option<crate::dpop::Alg>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Retryable; nothing stored should change.
    #[error("cannot reach the token endpoint: {cause}; check the network, then retry")]
    Network { cause: String },
    /// Retryable (a 5xx or 429); nothing stored should change.
    #[error("the token endpoint failed with HTTP {status}; retry later")]
    Unavailable { status: u16 },
    /// The grant (code or refresh token) is dead: authorize again.
    #[error("the authorization server no longer accepts this grant (invalid_grant{}); latchkey starts a new login on the next request", describe(.description))]
    InvalidGrant { description: Option<String> },
    /// The client registration is no longer valid: register again.
    #[error("the authorization server does not recognise this client (invalid_client{}); latchkey will register again, or fix client_id/client_secret in the config", describe(.description))]
    InvalidClient { description: Option<String> },
    #[error("the token endpoint refused: {error}{}", describe(.description))]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint sent an unusable response: {cause}")]
    Malformed { cause: String },
    #[error("cannot authenticate with private_key_jwt: {0}")]
    Assertion(#[from] crate::assertion::KeyError),
    #[error(transparent)]
    Target(#[from] crate::target::Refused),
    #[error(transparent)]
    Dpop(#[from] crate::dpop::DpopError),
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl TokenError {
    /// Whether the same request may succeed later, with every credential kept.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Network { .. } | Self::Unavailable { .. })
    }
}

/// An authorization code and what must go with it to the token endpoint.
#[derive(Debug)]
pub struct CodeGrant<'a> {
    pub code: &'a Secret,
    pub verifier: &'a Secret,
    pub redirect_uri: &'a str,
    pub resource: Option<&'a str>,
    /// The scopes asked for, used when the response does not say what was granted.
    pub requested: &'a [String],
}

/// Exchanges an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.5).
pub async fn exchange_code(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    grant: &CodeGrant<'_>,
) -> Result<TokenSet, TokenError> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", grant.code.expose()),
        ("code_verifier", grant.verifier.expose()),
        ("redirect_uri", grant.redirect_uri),
    ];
    if let Some(resource) = grant.resource {
        form.push(("resource", resource));
    }
    let tokens = request(http, endpoint, client, &form).await?;
    Ok(tokens.into_set(None, grant.requested))
}

/// Refreshes (RFC 6749 §6). A response without a refresh token keeps the old one.
pub async fn refresh(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    refresh_token: &Secret,
    resource: Option<&str>,
    granted: &[String],
) -> Result<TokenSet, TokenError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let tokens = request(http, endpoint, client, &form).await?;
    Ok(tokens.into_set(Some(refresh_token), granted))
}

/// The client-credentials grant (RFC 6749 §4.4), for machine-to-machine clients: no
/// person, no browser, and usually no refresh token (the grant is simply repeated).
pub async fn client_credentials(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    scopes: &[String],
    resource: Option<&str>,
) -> Result<TokenSet, TokenError> {
    let scope = scopes.join(" ");
    let mut form = vec![("grant_type", "client_credentials")];
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let tokens = request(http, endpoint, client, &form).await?;
    Ok(tokens.into_set(None, scopes))
}

/// Revokes a token (RFC 7009 §2.1). The server answers 200 even for a token it does
/// not know, so any 200 is success.
pub async fn revoke(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    token: &Secret,
    hint: &str,
) -> Result<(), TokenError> {
    let form = [("token", token.expose()), ("token_type_hint", hint)];
    post_form(http, "revocation endpoint", endpoint, Some(client), &form)
        .await
        .map(drop)
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
    /// The algorithm of the DPoP key a `token_type` DPoP token is bound to.
    #[serde(skip)]
    bound_to: Option<dpop::Alg>,
}

impl TokenResponse {
    pub(crate) fn into_set(self, old_refresh: Option<&Secret>, requested: &[String]) -> TokenSet {
        let dpop = self.bound_to;
        let lifetime = match &self.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        TokenSet::issued(
            Secret::new(self.access_token),
            self.refresh_token
                .map(Secret::new)
                .or_else(|| old_refresh.cloned()),
            lifetime,
            // RFC 6749 §5.1: no `scope` means the scope requested.
            match self.scope {
                Some(scope) => scope.split_ascii_whitespace().map(str::to_owned).collect(),
                None => requested.to_vec(),
            },
        )
        .bound(dpop)
    }
}

impl TokenSet {
    /// Tokens issued now that live `expires_in` seconds.
    pub fn issued(
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_in: Option<u64>,
        scopes: Vec<String>,
    ) -> Self {
        Self {
            access_token,
            refresh_token,
            expires_at: expires_in.and_then(expiry_after),
            scopes,
            dpop: None,
        }
    }

    /// These tokens as bound to the DPoP key of `dpop`'s algorithm.
    #[must_use]
    pub fn bound(self, dpop: Option<crate::dpop::Alg>) -> Self {
        Self { dpop, ..self }
    }
}

/// When a token that lives `secs` from now expires, in whole milliseconds: the
/// precision the stores keep, so that a record read back compares equal to the tokens
/// it was made from. An absurd lifetime must not overflow: it counts as none given.
fn expiry_after(secs: u64) -> Option<SystemTime> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let millis = u64::try_from(now.as_millis()).ok()?;
    let lifetime = secs.checked_mul(1000)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(millis.checked_add(lifetime)?))
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

async fn request(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    form: &[(&str, &str)],
) -> Result<TokenResponse, TokenError> {
    let bytes = post_form(http, "token endpoint", endpoint, Some(client), form).await?;
    let mut tokens = parse_tokens(&bytes)?;
    let dpop = tokens.token_type.eq_ignore_ascii_case("dpop");
    // RFC 9449 §5: DPoP is the answer to a proof. Unasked, it is a token latchkey
    // could not use; Bearer to a proof means the server did not bind the token, which
    // is allowed unless bound tokens are required.
    match http.dpop() {
        None if dpop => Err(TokenError::Malformed {
            cause: "token_type is DPoP, but latchkey sent no DPoP proof (the authorization server's metadata lists no dpop_signing_alg_values_supported); set dpop = true under the server's [oauth] section".into(),
        }),
        Some(prover) if prover.required && !dpop => Err(TokenError::Malformed {
            cause: "the authorization server issued a Bearer token to a DPoP request, but DPoP-bound tokens are required (dpop = true in the config, or the resource's dpop_bound_access_tokens_required); set dpop = false to accept Bearer tokens".into(),
        }),
        prover => {
            tokens.bound_to = prover.filter(|_| dpop).map(|p| p.key.alg());
            Ok(tokens)
        }
    }
}

/// A successful token response's body, checked: the pure part of [`request`], on
/// its own for the fuzz target and tests.
pub(crate) fn parse_tokens(bytes: &[u8]) -> Result<TokenResponse, TokenError> {
    // The body holds tokens: parse errors must not quote it.
    let tokens: TokenResponse =
        serde_json::from_slice(bytes).map_err(|e| TokenError::Malformed {
            cause: format!(
                "not a token response ({} at line {} column {})",
                classify(&e),
                e.line(),
                e.column()
            ),
        })?;
    if !["bearer", "dpop"]
        .iter()
        .any(|t| tokens.token_type.eq_ignore_ascii_case(t))
    {
        return Err(TokenError::Malformed {
            cause: format!(
                "token_type is {:?}; latchkey supports Bearer and DPoP tokens",
                tokens.token_type
            ),
        });
    }
    if tokens.access_token.is_empty() {
        return Err(TokenError::Malformed {
            cause: "empty access_token".into(),
        });
    }
    Ok(tokens)
}

/// Any grant's token request, for the grants defined elsewhere (the device code,
/// the JWT bearer grant, which may go without client authentication).
pub(crate) async fn grant(
    http: &Http,
    endpoint: &str,
    client: Option<&ClientCredentials>,
    form: &[(&str, &str)],
    requested: &[String],
) -> Result<TokenSet, TokenError> {
    let bytes = post_form(http, "token endpoint", endpoint, client, form).await?;
    Ok(parse_tokens(&bytes)?.into_set(None, requested))
}

/// POSTs `form`, with the client's authentication, to the OAuth endpoint
/// `endpoint` (`what` names it), once the target rule allows it, and classifies the
/// failure (RFC 6749 §5.2): a transport error or a 5xx is retryable, an OAuth error
/// is named. Token, device authorization and revocation requests all take this shape.
/// Without a client, the form goes as it is.
pub(crate) async fn post_form(
    http: &Http,
    what: &'static str,
    endpoint: &str,
    client: Option<&ClientCredentials>,
    form: &[(&str, &str)],
) -> Result<bytes::Bytes, TokenError> {
    let prover = http.dpop();
    let htu = prover.map(|_| dpop::htu(endpoint));
    let mut retried = false;
    let (status, bytes) = loop {
        // Made again for a retry: a client assertion's jti must not repeat either.
        let (body, basic) = encode_form(client, form)?;
        let proof = match (prover, &htu) {
            (Some(prover), Some(htu)) => Some(prover.key.proof(
                "POST",
                htu,
                None,
                prover.nonce.get().as_deref(),
            )?),
            _ => None,
        };
        let (status, headers, bytes) = http
            .fetch_headed(what, endpoint, |http| {
                let mut request = http
                    .post(endpoint)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .timeout(REQUEST_TIMEOUT)
                    .body(body);
                if let Some(value) = basic {
                    request = request.header(reqwest::header::AUTHORIZATION, value);
                }
                match proof {
                    Some(proof) => request.header(dpop::DPOP, proof),
                    None => request,
                }
            })
            .await
            .map_err(|e| match e {
                FetchError::Refused(refused) => TokenError::Target(refused),
                FetchError::Network(cause) => TokenError::Network { cause },
                FetchError::TooLarge(cause) => TokenError::Malformed { cause },
            })?;
        // RFC 9449 §8: any answer may bring a new nonce; a `use_dpop_nonce` refusal
        // with one is answered once with a proof that carries it.
        let fresh = prover.is_some_and(|p| p.nonce.update(headers.get(dpop::DPOP_NONCE)));
        if fresh
            && !retried
            && status == reqwest::StatusCode::BAD_REQUEST
            && matches!(refusal(status, &bytes), TokenError::Refused { ref error, .. } if error == dpop::USE_DPOP_NONCE)
        {
            retried = true;
            continue;
        }
        break (status, bytes);
    };
    let bytes = bytes::Bytes::from(bytes);
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(TokenError::Unavailable {
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        return Err(refusal(status, &bytes));
    }
    Ok(bytes)
}

/// What an OAuth error response (RFC 6749 §5.2) with a 4xx `status` says: the pure
/// part of [`send`], on its own for the fuzz target and tests.
pub(crate) fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> TokenError {
    let error: ErrorResponse = match serde_json::from_slice(bytes) {
        Ok(error) => error,
        Err(_) => {
            return TokenError::Malformed {
                cause: format!("HTTP {status} without an OAuth error body"),
            };
        }
    };
    match error.error.as_str() {
        "invalid_grant" => TokenError::InvalidGrant {
            description: error.error_description,
        },
        "invalid_client" => TokenError::InvalidClient {
            description: error.error_description,
        },
        _ => TokenError::Refused {
            error: error.error,
            description: error.error_description,
        },
    }
}

/// The form body and, for `client_secret_basic`, the `Authorization` value. A plain
/// function: the serializer is not `Send`, so it must not live in an async body.
fn encode_form(
    client: Option<&ClientCredentials>,
    form: &[(&str, &str)],
) -> Result<(String, Option<reqwest::header::HeaderValue>), TokenError> {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.extend_pairs(form);
    let mut basic = None;
    let Some(client) = client else {
        return Ok((body.finish(), None));
    };
    match &client.auth {
        ClientAuth::None => {
            body.append_pair("client_id", &client.client_id);
        }
        ClientAuth::Post(secret) => {
            body.append_pair("client_id", &client.client_id);
            body.append_pair("client_secret", secret.expose());
        }
        ClientAuth::PrivateKeyJwt(key) => {
            let assertion = key.assertion(&client.client_id, &client.issuer)?;
            body.append_pair("client_id", &client.client_id);
            body.append_pair("client_assertion_type", ASSERTION_TYPE);
            body.append_pair("client_assertion", assertion.expose());
        }
        ClientAuth::Basic(secret) => {
            // RFC 6749 §2.3.1: both parts are form-encoded before Base64.
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(&client.client_id), encode(secret.expose()));
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair)))
                    .map_err(|_| TokenError::Malformed {
                        cause: "client credentials cannot form a header".into(),
                    })?;
            value.set_sensitive(true);
            basic = Some(value);
        }
    }
    Ok((body.finish(), basic))
}

fn classify(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "missing or mistyped field",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}
