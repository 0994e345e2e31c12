//! The authorization request and its callback (RFC 6749 §4.1 with PKCE, RFC 7636;
//! resource indicators, RFC 8707; issuer identification, RFC 9207), and the MCP
//! spec's scope selection.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::Secret;
use crate::challenge::BearerChallenge;
use crate::discovery::{ResourceMetadata, ServerMetadata};

/// Scopes for a first authorization (MCP authorization, Scope Selection Strategy):
/// the challenge's `scope`, else the resource's `scopes_supported`, else none (the
/// request then has no `scope`). `offline_access` is added when the authorization
/// server offers it, so that a refresh token comes back.
pub fn select_scopes(
    challenge: Option<&BearerChallenge>,
    resource: Option<&ResourceMetadata>,
    server: &ServerMetadata,
) -> Vec<String> {
    let mut scopes = match challenge.filter(|c| !c.scopes.is_empty()) {
        Some(challenge) => challenge.scopes.clone(),
        None => resource
            .and_then(|r| r.scopes_supported.clone())
            .unwrap_or_default(),
    };
    let offered = server
        .scopes_supported
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| s == "offline_access"));
    if offered && !scopes.is_empty() && !scopes.iter().any(|s| s == "offline_access") {
        scopes.push("offline_access".to_owned());
    }
    scopes
}

/// Step-up (MCP authorization, Step-Up Authorization Flow): the scopes already
/// granted plus the ones a 403 `insufficient_scope` asks for, in order, once each.
pub fn step_up_scopes(granted: &[String], challenge: &BearerChallenge) -> Vec<String> {
    let mut scopes = granted.to_vec();
    for scope in &challenge.scopes {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    scopes
}

/// What one authorization request needs besides the server's metadata.
#[derive(Debug, Clone)]
pub struct AuthorizationParams<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    /// The RFC 8707 resource indicator; `None` for servers that reject it.
    pub resource: Option<&'a str>,
    /// Extra query parameters from the config, such as `access_type=offline`.
    pub extra: &'a [(String, String)],
}

/// An authorization request in flight. Everything needed to check the callback is
/// recorded here, with the PKCE verifier, so nothing can be swapped in between.
#[derive(Debug)]
pub struct PendingAuthorization {
    /// The URL to open in the browser.
    pub url: Url,
    pub state: Secret,
    pub verifier: Secret,
    pub redirect_uri: String,
    /// The issuer the request went to (RFC 9207: the callback's `iss` must match).
    pub issuer: String,
    pub iss_supported: bool,
}

/// Builds the authorization URL with a fresh `state` and PKCE S256 verifier.
pub fn start(
    server: &ServerMetadata,
    params: &AuthorizationParams<'_>,
) -> Result<PendingAuthorization, url::ParseError> {
    let state = random_secret(32);
    let verifier = random_secret(48);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()));
    let mut url = Url::parse(server.authorization_endpoint.as_deref().unwrap_or_default())?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", params.client_id)
            .append_pair("redirect_uri", params.redirect_uri)
            .append_pair("state", state.expose())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if !params.scopes.is_empty() {
            query.append_pair("scope", &params.scopes.join(" "));
        }
        if let Some(resource) = params.resource {
            query.append_pair("resource", resource);
        }
        for (key, value) in params.extra {
            query.append_pair(key, value);
        }
        if wants_consent_prompt(server, params) {
            query.append_pair("prompt", "consent");
        }
    }
    Ok(PendingAuthorization {
        url,
        state,
        verifier,
        redirect_uri: params.redirect_uri.to_owned(),
        issuer: server.issuer.clone(),
        iss_supported: server.authorization_response_iss_parameter_supported,
    })
}

/// Whether to send `prompt=consent`. An OpenID provider drops `offline_access`, and
/// so issues no refresh token, unless the request asks for consent (OpenID Connect
/// Core 1.0 §11): without it every expiry would cost a browser login. A server is
/// taken for an OpenID provider when its metadata has what OpenID Connect Discovery
/// requires of one (`id_token_signing_alg_values_supported`) or lists `consent` in
/// `prompt_values_supported`. A `prompt` from the config's `authorize_params` wins.
fn wants_consent_prompt(server: &ServerMetadata, params: &AuthorizationParams<'_>) -> bool {
    let openid = server.id_token_signing_alg_values_supported.is_some()
        || server
            .prompt_values_supported
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p == "consent"));
    openid
        && params.scopes.iter().any(|s| s == "offline_access")
        && !params.extra.iter().any(|(key, _)| key == "prompt")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error(
        "the redirect is not for this login (its state does not match); send the request again to start a new login"
    )]
    StateMismatch,
    #[error(
        "the redirect names issuer {found:?}, but the request went to {expected:?}; refusing it (RFC 9207, a possible mix-up attack)"
    )]
    IssuerMismatch { found: String, expected: String },
    #[error(
        "the redirect has no iss parameter, which the authorization server promised (RFC 9207); refusing it"
    )]
    IssuerMissing,
    #[error("the authorization server refused: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        error: String,
        description: Option<String>,
    },
    #[error("the redirect has no authorization code")]
    NoCode,
}

impl PendingAuthorization {
    /// Checks the redirect's query and returns the authorization code. The order
    /// follows RFC 9207 §2.4: `state` and `iss` first, and an error response from the
    /// wrong issuer is not acted on or shown.
    pub fn finish(&self, redirect: &Url) -> Result<Secret, CallbackError> {
        let mut state = None;
        let mut iss = None;
        let mut code = None;
        let mut error = None;
        let mut description = None;
        for (key, value) in redirect.query_pairs() {
            match &*key {
                "state" => state = Some(value.into_owned()),
                "iss" => iss = Some(value.into_owned()),
                "code" => code = Some(Secret::new(value.into_owned())),
                "error" => error = Some(value.into_owned()),
                "error_description" => description = Some(value.into_owned()),
                _ => {}
            }
        }
        if !state.is_some_and(|state| self.state.matches(&state)) {
            return Err(CallbackError::StateMismatch);
        }
        match iss {
            // Exact string comparison, no normalisation (RFC 9207 §2.4).
            Some(found) if found != self.issuer => {
                return Err(CallbackError::IssuerMismatch {
                    found,
                    expected: self.issuer.clone(),
                });
            }
            None if self.iss_supported => return Err(CallbackError::IssuerMissing),
            _ => {}
        }
        if let Some(error) = error {
            return Err(CallbackError::Denied { error, description });
        }
        code.filter(|c| !c.expose().is_empty())
            .ok_or(CallbackError::NoCode)
    }
}

/// `bytes` random bytes as URL-safe base64 (RFC 7636 §4.1 allows these characters).
pub fn random_secret(bytes: usize) -> Secret {
    let mut buf = vec![0u8; bytes];
    // Without the OS random number generator no login can be safe.
    getrandom::fill(&mut buf).expect("the OS random number generator is available");
    Secret::new(URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(iss_supported: bool) -> ServerMetadata {
        ServerMetadata {
            issuer: "https://auth.example.com".into(),
            authorization_endpoint: Some("https://auth.example.com/authorize?tenant=a".into()),
            token_endpoint: "https://auth.example.com/token".into(),
            scopes_supported: Some(vec!["read".into(), "offline_access".into()]),
            authorization_response_iss_parameter_supported: iss_supported,
            ..ServerMetadata::default()
        }
    }

    fn pending(iss_supported: bool) -> PendingAuthorization {
        let scopes = vec!["read".to_owned()];
        let extra = vec![("access_type".to_owned(), "offline".to_owned())];
        start(
            &server(iss_supported),
            &AuthorizationParams {
                client_id: "client-1",
                redirect_uri: "http://127.0.0.1:4711/callback",
                scopes: &scopes,
                resource: Some("https://mcp.example.com/mcp"),
                extra: &extra,
            },
        )
        .expect("valid endpoint")
    }

    /// The query parameters an authorization request to `server` carries.
    fn query_of(
        server: &ServerMetadata,
        scopes: &[&str],
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let pending = start(
            server,
            &AuthorizationParams {
                client_id: "client-1",
                redirect_uri: "http://127.0.0.1:4711/callback",
                scopes: &scopes,
                resource: None,
                extra: &extra,
            },
        )
        .expect("valid endpoint");
        pending.url.query_pairs().into_owned().collect()
    }

    #[test]
    fn an_openid_provider_is_asked_for_consent_when_offline_access_is_wanted() {
        let prompts = |server: &ServerMetadata, scopes: &[&str], extra: &[(&str, &str)]| {
            query_of(server, scopes, extra)
                .into_iter()
                .filter(|(k, _)| k == "prompt")
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        let plain = server(false);
        let openid = ServerMetadata {
            id_token_signing_alg_values_supported: Some(vec!["RS256".into()]),
            ..server(false)
        };
        let prompt_values = ServerMetadata {
            prompt_values_supported: Some(vec!["none".into(), "login".into(), "consent".into()]),
            ..server(false)
        };
        let offline = ["read", "offline_access"];
        assert_eq!(prompts(&openid, &offline, &[]), ["consent"]);
        assert_eq!(prompts(&prompt_values, &offline, &[]), ["consent"]);
        assert!(
            prompts(&plain, &offline, &[]).is_empty(),
            "not an OpenID provider"
        );
        assert!(
            prompts(&openid, &["read"], &[]).is_empty(),
            "no offline_access wanted"
        );
        assert_eq!(
            prompts(&openid, &offline, &[("prompt", "login consent")]),
            ["login consent"],
            "the config's prompt wins and is sent once"
        );
    }

    fn redirect(query: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:4711/callback?{query}")).expect("url")
    }

    #[test]
    fn authorization_url_carries_pkce_state_resource_and_extras() {
        let p = pending(false);
        let q: std::collections::HashMap<_, _> = p.url.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "a", "the endpoint's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.expose().as_bytes()));
        assert_eq!(q["code_challenge"], expected);
        assert!(
            p.verifier.expose().len() >= 43,
            "RFC 7636 §4.1: 43 to 128 characters"
        );
        assert_eq!(q["state"], p.state.expose());
        assert_eq!(q["resource"], "https://mcp.example.com/mcp");
        assert_eq!(q["scope"], "read");
        assert_eq!(q["access_type"], "offline");
        assert_ne!(pending(false).state, p.state, "state is fresh each time");
        assert!(
            !format!("{p:?}").contains(p.verifier.expose()),
            "Debug hides the verifier"
        );
    }

    #[test]
    fn callback_checks_state_then_iss_then_error() {
        let p = pending(true);
        let state = p.state.expose().to_owned();
        let good = p
            .finish(&redirect(&format!(
                "code=abc&state={state}&iss=https%3A%2F%2Fauth.example.com"
            )))
            .expect("code");
        assert_eq!(good.expose(), "abc");
        assert_eq!(
            p.finish(&redirect(
                "code=abc&state=forged&iss=https%3A%2F%2Fauth.example.com"
            )),
            Err(CallbackError::StateMismatch)
        );
        assert_eq!(
            p.finish(&redirect(&format!("code=abc&state={state}"))),
            Err(CallbackError::IssuerMissing)
        );
        let wrong = p.finish(&redirect(&format!(
            "error=access_denied&state={state}&iss=https%3A%2F%2Fevil.example"
        )));
        assert!(
            matches!(wrong, Err(CallbackError::IssuerMismatch { .. })),
            "a mix-up error is not shown as a denial"
        );
        let slash = p.finish(&redirect(&format!(
            "code=abc&state={state}&iss=https%3A%2F%2Fauth.example.com%2F"
        )));
        assert!(
            matches!(slash, Err(CallbackError::IssuerMismatch { .. })),
            "no normalisation"
        );
        let denied = p.finish(&redirect(&format!("error=access_denied&error_description=no&state={state}&iss=https%3A%2F%2Fauth.example.com")));
        assert_eq!(
            denied,
            Err(CallbackError::Denied {
                error: "access_denied".into(),
                description: Some("no".into())
            })
        );

        // Without iss support, a missing iss is fine and a present one is still checked.
        let p = pending(false);
        let state = p.state.expose().to_owned();
        assert!(
            p.finish(&redirect(&format!("code=abc&state={state}")))
                .is_ok()
        );
        assert!(
            p.finish(&redirect(&format!(
                "code=abc&state={state}&iss=https%3A%2F%2Fother.example"
            )))
            .is_err()
        );
        assert_eq!(
            p.finish(&redirect(&format!("state={state}"))),
            Err(CallbackError::NoCode)
        );
    }

    #[test]
    fn scope_selection_follows_the_spec() {
        let challenge = BearerChallenge {
            scopes: vec!["files:read".into()],
            ..BearerChallenge::default()
        };
        let prm = ResourceMetadata {
            scopes_supported: Some(vec!["a".into(), "b".into()]),
            ..ResourceMetadata::default()
        };
        let no_offline = ServerMetadata::default();
        assert_eq!(
            select_scopes(Some(&challenge), Some(&prm), &no_offline),
            ["files:read"]
        );
        assert_eq!(select_scopes(None, Some(&prm), &no_offline), ["a", "b"]);
        assert!(select_scopes(None, Some(&ResourceMetadata::default()), &no_offline).is_empty());
        assert_eq!(
            select_scopes(Some(&challenge), None, &server(false)),
            ["files:read", "offline_access"]
        );
        let more = BearerChallenge {
            scopes: vec!["files:write".into(), "files:read".into()],
            ..BearerChallenge::default()
        };
        assert_eq!(
            step_up_scopes(&["files:read".into()], &more),
            ["files:read", "files:write"]
        );
    }
}
