//! A fake OAuth authorization server and the protected-resource side of an MCP server,
//! with switches for every discovery variant the MCP authorization spec allows (and
//! some it forbids). Everything is served from one loopback port: the MCP resource is
//! `/mcp`, the issuer is the origin plus [`AuthOptions::issuer_path`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the protected resource metadata is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrmAt {
    /// Only at `/custom/prm.json`, which the 401's `resource_metadata` names.
    HeaderOnly,
    /// `/.well-known/oauth-protected-resource/mcp`.
    PathInserted,
    /// `/.well-known/oauth-protected-resource`.
    Root,
    /// Nowhere: a 2025-03-26 server.
    Nowhere,
}

/// Which authorization server metadata documents exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataAt {
    Rfc8414,
    OpenIdConnect,
    /// OpenID Connect at `<issuer>/.well-known/openid-configuration` (path appended).
    OpenIdAppended,
    Nowhere,
}

#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub prm_at: PrmAt,
    pub metadata_at: MetadataAt,
    /// A path for the issuer, such as `/tenant1`; empty for none.
    pub issuer_path: String,
    /// Publish this `issuer` instead of the real one (a hostile or broken server).
    pub claimed_issuer: Option<String>,
    /// Publish this `resource` in the protected resource metadata instead of `/mcp`'s URL.
    pub claimed_resource: Option<String>,
    /// Advertise `code_challenge_methods_supported: ["S256"]`.
    pub pkce: bool,
    /// Publish a plain-HTTP, non-loopback token endpoint.
    pub insecure_token_endpoint: bool,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            prm_at: PrmAt::PathInserted,
            metadata_at: MetadataAt::Rfc8414,
            issuer_path: String::new(),
            claimed_issuer: None,
            claimed_resource: None,
            pkce: true,
            insecure_token_endpoint: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthServer {
    addr: SocketAddr,
    shared: Arc<AuthShared>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct AuthShared {
    options: AuthOptions,
    origin: String,
    paths: Mutex<Vec<String>>,
}

impl AuthServer {
    pub async fn start(options: AuthOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(AuthShared {
            options,
            origin: format!("http://{addr}"),
            paths: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(serve).with_state(shared.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared, stop })
    }

    /// The MCP server URL whose authorization this fake describes.
    pub fn resource_url(&self) -> String {
        format!("{}/mcp", self.shared.origin)
    }

    pub fn issuer(&self) -> String {
        issuer(&self.shared)
    }

    /// The `resource_metadata` URL a 401 from this server would name.
    pub fn header_prm_url(&self) -> String {
        format!("{}/custom/prm.json", self.shared.origin)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every path requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

fn issuer(shared: &AuthShared) -> String {
    format!("{}{}", shared.origin, shared.options.issuer_path)
}

async fn serve(State(shared): State<Arc<AuthShared>>, uri: Uri, _request: Request) -> Response {
    let path = uri.path().to_owned();
    shared
        .paths
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.clone());
    let options = &shared.options;
    let prm_path = match options.prm_at {
        PrmAt::HeaderOnly => Some("/custom/prm.json"),
        PrmAt::PathInserted => Some("/.well-known/oauth-protected-resource/mcp"),
        PrmAt::Root => Some("/.well-known/oauth-protected-resource"),
        PrmAt::Nowhere => None,
    };
    if prm_path == Some(path.as_str()) {
        return axum::Json(json!({
            "resource": options.claimed_resource.clone().unwrap_or_else(|| format!("{}/mcp", shared.origin)),
            "authorization_servers": [issuer(&shared)],
            "scopes_supported": ["mcp:read", "mcp:write"],
        }))
        .into_response();
    }
    let issuer_path = options.issuer_path.as_str();
    let metadata_path = match options.metadata_at {
        MetadataAt::Rfc8414 => Some(format!(
            "/.well-known/oauth-authorization-server{issuer_path}"
        )),
        MetadataAt::OpenIdConnect => {
            Some(format!("/.well-known/openid-configuration{issuer_path}"))
        }
        MetadataAt::OpenIdAppended => {
            Some(format!("{issuer_path}/.well-known/openid-configuration"))
        }
        MetadataAt::Nowhere => None,
    };
    if metadata_path.as_deref() == Some(path.as_str()) {
        return axum::Json(server_metadata(&shared)).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

fn server_metadata(shared: &AuthShared) -> Value {
    let options = &shared.options;
    let issuer = issuer(shared);
    let token_endpoint = if options.insecure_token_endpoint {
        "http://auth.example.com/token".to_owned()
    } else {
        format!("{issuer}/token")
    };
    let mut document = json!({
        "issuer": options.claimed_issuer.clone().unwrap_or_else(|| issuer.clone()),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token_endpoint,
        "registration_endpoint": format!("{issuer}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": ["mcp:read", "mcp:write", "offline_access"],
    });
    if options.pkce {
        document["code_challenge_methods_supported"] = json!(["S256"]);
    }
    document
}
