//! A fake enterprise identity provider for Enterprise-Managed Authorization
//! (SEP-990): an OpenID provider whose `/authorize` signs the person in at once and
//! whose `/token` issues signed ID tokens (authorization code with PKCE, refresh) and,
//! by RFC 8693 token exchange, ID-JAGs (draft-ietf-oauth-identity-assertion-authz-grant
//! §4.3) for the authorization servers its policy knows. An [`crate::AuthServer`]
//! trusts it through [`Idp::trusted`]: the key its JWKS publishes. Switches make it
//! issue ID-JAGs for the wrong audience or already expired, so that the checks at
//! the authorization server can be seen to refuse them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::jwt::{ID_JAG_TYP, Signer, TrustedIssuer};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// latchkey's client at the IdP, and its secret (sent Basic or in the body).
    pub client_id: String,
    pub client_secret: String,
    pub id_token_lifetime: i64,
    /// Issue refresh tokens with ID tokens.
    pub refresh_tokens: bool,
    /// Hostile or broken: ID-JAGs for this audience instead of the one asked for.
    pub jag_audience: Option<String>,
    /// Broken: ID-JAGs that expired a minute ago.
    pub expired_jags: bool,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            client_id: "latchkey-desktop".into(),
            client_secret: "idp-secret-1".into(),
            id_token_lifetime: 3600,
            refresh_tokens: true,
            jag_audience: None,
            expired_jags: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Idp {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    options: IdpOptions,
    issuer: String,
    signer: Signer,
    state: Mutex<IdpState>,
}

#[derive(Debug, Default)]
struct IdpState {
    next: u64,
    /// Codes: (redirect_uri, PKCE challenge).
    codes: HashMap<String, (String, String)>,
    refresh_tokens: Vec<String>,
    /// Every `/token` request's form, in order.
    requests: Vec<HashMap<String, String>>,
    /// Every ID token and ID-JAG issued.
    issued: Vec<String>,
    /// The policy: for each authorization server (the exchange's `audience`), the
    /// client_id latchkey has there, which the ID-JAG names. Others are refused.
    audiences: Vec<(String, String)>,
}

impl Idp {
    pub async fn start(options: IdpOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            signer: Signer::new(&issuer),
            issuer,
            options,
            state: Mutex::new(IdpState::default()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(configuration))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { shared, stop })
    }

    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Lets the person use the MCP servers of the authorization server `audience`,
    /// where latchkey's client is `client_id`.
    pub fn allow(&self, audience: &str, client_id: &str) {
        self.lock()
            .audiences
            .push((audience.to_owned(), client_id.to_owned()));
    }

    /// What an authorization server trusts this IdP's ID-JAGs by.
    pub fn trusted(&self) -> TrustedIssuer {
        self.shared.signer.trusted(Some(ID_JAG_TYP))
    }

    /// The grant types of every `/token` request, in order.
    pub fn grants(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|r| r.get("grant_type").cloned().unwrap_or_default())
            .collect()
    }

    /// Logins in the browser so far (authorization code grants).
    pub fn logins(&self) -> usize {
        self.grants()
            .iter()
            .filter(|g| *g == "authorization_code")
            .count()
    }

    /// The token exchange requests, each as its form.
    pub fn exchanges(&self) -> Vec<HashMap<String, String>> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.get("grant_type").map(String::as_str) == Some(TOKEN_EXCHANGE))
            .cloned()
            .collect()
    }

    /// Every ID token and ID-JAG it issued, for tests that look for them where they
    /// must not be.
    pub fn issued(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdpState> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdpState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn configuration(State(shared): State<Arc<Shared>>) -> Response {
    let issuer = &shared.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "grant_types_supported": ["authorization_code", "refresh_token", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": ["openid", "offline_access"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.signer.jwks()).into_response()
}

/// `GET /authorize`: the person signs in and consents at once.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    if param("client_id") != shared.options.client_id
        || param("response_type") != "code"
        || param("code_challenge_method") != "S256"
        || !param("scope").split(' ').any(|s| s == "openid")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let mut state = shared.lock();
    state.next += 1;
    let code = format!("idp-code-{}", state.next);
    state.codes.insert(
        code.clone(),
        (param("redirect_uri"), param("code_challenge")),
    );
    drop(state);
    let Ok(mut location) = url::Url::parse(&param("redirect_uri")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &param("state"))
        .append_pair("iss", &shared.issuer);
    (StatusCode::FOUND, [("location", location.to_string())]).into_response()
}

/// Whether the request authenticates latchkey's client (Basic or in the body).
fn authenticated(
    options: &IdpOptions,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> bool {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", options.client_id, options.client_secret);
    basic.as_deref() == Some(expected.as_str())
        || (form.get("client_id") == Some(&options.client_id)
            && form.get("client_secret") == Some(&options.client_secret))
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let options = &shared.options;
    let mut state = shared.lock();
    state.requests.push(form.clone());
    if !authenticated(options, &headers, &form) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let field = |k: &str| form.get(k).map_or("", String::as_str);
    match field("grant_type") {
        "authorization_code" => {
            let Some((redirect_uri, challenge)) = state.codes.remove(field("code")) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            let computed =
                URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
            if redirect_uri != field("redirect_uri") || computed != challenge {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri or verifier mismatch",
                );
            }
            id_token_response(&shared, &mut state)
        }
        "refresh_token" => {
            if !state
                .refresh_tokens
                .iter()
                .any(|t| t == field("refresh_token"))
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            }
            id_token_response(&shared, &mut state)
        }
        TOKEN_EXCHANGE => exchange(&shared, &mut state, &form),
        _ => error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "not supported",
        ),
    }
}

fn id_token_response(shared: &Shared, state: &mut IdpState) -> Response {
    state.next += 1;
    let id_token = shared.signer.sign(
        "JWT",
        json!({"sub": "ada", "aud": shared.options.client_id, "jti": format!("id-{}", state.next)}),
        shared.options.id_token_lifetime,
    );
    state.issued.push(id_token.clone());
    let mut body = json!({
        "access_token": format!("idp-at-{}", state.next),
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
        "scope": "openid offline_access",
    });
    if shared.options.refresh_tokens {
        let refresh = format!("idp-rt-{}", state.next);
        state.refresh_tokens.push(refresh.clone());
        body["refresh_token"] = json!(refresh);
    }
    axum::Json(body).into_response()
}

/// RFC 8693 token exchange of an ID token this IdP issued for an ID-JAG.
fn exchange(shared: &Shared, state: &mut IdpState, form: &HashMap<String, String>) -> Response {
    let options = &shared.options;
    let field = |k: &str| form.get(k).map_or("", String::as_str);
    if field("requested_token_type") != ID_JAG || field("subject_token_type") != ID_TOKEN {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "an ID token for an ID-JAG only",
        );
    }
    let trusted = [shared.signer.trusted(Some("JWT"))];
    let subject = match crate::jwt::verify(field("subject_token"), &trusted, &options.client_id) {
        Ok(claims) => claims,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_grant", &why),
    };
    let audience = field("audience");
    let Some((_, client_id)) = state
        .audiences
        .iter()
        .find(|(aud, _)| aud == audience)
        .cloned()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "no policy for this audience",
        );
    };
    state.next += 1;
    let mut claims = json!({
        "sub": subject["sub"],
        "aud": options.jag_audience.as_deref().unwrap_or(audience),
        "client_id": client_id,
        "jti": format!("jag-{}", state.next),
        "scope": field("scope"),
    });
    if !field("resource").is_empty() {
        claims["resource"] = Value::from(field("resource"));
    }
    let jag = shared.signer.sign(
        ID_JAG_TYP,
        claims,
        if options.expired_jags { -60 } else { 300 },
    );
    state.issued.push(jag.clone());
    axum::Json(json!({
        "access_token": jag,
        "issued_token_type": ID_JAG,
        "token_type": "N_A",
        "expires_in": 300,
    }))
    .into_response()
}
