//! A server's `oauth` key: `false`, or the table of OAuth settings.

use std::sync::Arc;
use std::time::Duration;

use latchkey_auth::Secret;
use latchkey_auth::assertion::{Algorithm, SigningKey};
use latchkey_auth::session::Grant;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use url::Url;

use super::check::Checker;
use super::{OAuth, OAuthConfig};

pub(super) const OAUTH_KEYS: &[&str] = &[
    "grant",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_secret_file",
    "private_key_file",
    "private_key_env",
    "signing_alg",
    "key_id",
    "client_metadata_url",
    "redirect_port",
    "send_resource",
    "authorize_params",
    "auth_timeout_secs",
    "login_wait_secs",
    "issuer",
    "assertion_file",
    "assertion_env",
    "idp",
    "dpop",
];

impl Checker<'_> {
    pub(super) fn oauth(
        &mut self,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> OAuth {
        let span = value.span();
        let mut table = match value.into_inner() {
            DeValue::Boolean(true) => return OAuth::Enabled(OAuthConfig::default()),
            DeValue::Boolean(false) => return OAuth::Disabled,
            DeValue::Table(table) => table,
            other => {
                self.error(
                    span,
                    format!(
                        "`oauth` must be true, false or a table, not a {}",
                        other.type_str()
                    ),
                    Some("write oauth = false to use only the static headers"),
                );
                return OAuth::Disabled;
            }
        };
        self.take_unknown(&mut table, OAUTH_KEYS, "oauth keys are");
        let mut oauth = OAuthConfig {
            client_id: self
                .field::<String>(
                    &mut table,
                    "client_id",
                    "write client_id = \"the id the server gave you\"",
                )
                .map(Spanned::into_inner)
                .filter(|id| !id.trim().is_empty()),
            ..OAuthConfig::default()
        };
        oauth.client_secret = self.client_secret(&mut table, env);
        oauth.grant = self.grant(&mut table, span.clone(), env);
        oauth.private_key = self.private_key(&mut table, env);
        if (oauth.client_secret.is_some() || oauth.private_key.is_some())
            && oauth.client_id.is_none()
        {
            self.error(
                span.clone(),
                "a client secret or private key is set but client_id is not",
                Some("add client_id to the oauth table"),
            );
        }
        if oauth.grant == Grant::ClientCredentials
            && oauth.client_id.is_some()
            && oauth.client_secret.is_none()
            && oauth.private_key.is_none()
        {
            self.error(
                span.clone(),
                "grant = \"client_credentials\" needs the client to authenticate",
                Some("add client_secret (or client_secret_env / client_secret_file), or private_key_file for private_key_jwt"),
            );
        }
        if oauth.grant == Grant::ClientCredentials && oauth.client_id.is_none() {
            self.error(
                span.clone(),
                "grant = \"client_credentials\" needs a client registered at the authorization server",
                Some("add client_id, and client_secret or private_key_file, to the oauth table"),
            );
        }
        if let Some(url) = self.field::<String>(
            &mut table,
            "client_metadata_url",
            "write the HTTPS URL where your client ID metadata document is served",
        ) {
            match Url::parse(url.get_ref()) {
                Ok(parsed) if parsed.scheme() == "https" && parsed.path() != "/" => {
                    oauth.client_metadata_url = Some(parsed);
                }
                _ => self.error(
                    url.span(),
                    "client_metadata_url must be an https URL with a path",
                    Some("for example client_metadata_url = \"https://example.com/latchkey/client.json\""),
                ),
            }
        }
        if let Some(port) = self.field::<u16>(
            &mut table,
            "redirect_port",
            "a port number, such as redirect_port = 33418 (0 picks a free one)",
        ) {
            oauth.redirect_port = port.into_inner();
        }
        if let Some(send) = self.field::<bool>(
            &mut table,
            "send_resource",
            "write send_resource = false for servers that reject the resource parameter",
        ) {
            oauth.send_resource = send.into_inner();
        }
        if let Some(params) = self.field::<toml::map::Map<String, toml::Value>>(
            &mut table,
            "authorize_params",
            "write authorize_params = { access_type = \"offline\" }",
        ) {
            let span = params.span();
            for (key, value) in params.into_inner() {
                match value {
                    toml::Value::String(value) => oauth.authorize_params.push((key, value)),
                    _ => self.error(
                        span.clone(),
                        format!("authorize_params.{key} must be a string"),
                        Some("quote the value"),
                    ),
                }
            }
        }
        if let Some(secs) = self.field::<u64>(
            &mut table,
            "auth_timeout_secs",
            "a whole number of seconds, such as auth_timeout_secs = 120",
        ) {
            oauth.auth_timeout = Duration::from_secs(secs.into_inner());
        }
        if let Some(secs) = self.field::<u64>(
            &mut table,
            "login_wait_secs",
            "a whole number of seconds, such as login_wait_secs = 10",
        ) {
            oauth.login_wait = Duration::from_secs(secs.into_inner());
        }
        let issuer_hint = "the authorization server's issuer exactly as its metadata gives it, such as issuer = \"https://auth.example.com\"";
        if let Some(issuer) = self.field::<String>(&mut table, "issuer", issuer_hint) {
            match Url::parse(issuer.get_ref()) {
                Ok(url) if latchkey_auth::discovery::is_secure(&url) && url.query().is_none() => {
                    oauth.issuer = Some(issuer.into_inner());
                }
                _ => self.error(
                    issuer.span(),
                    "issuer must be an https URL (http only on loopback) without a query",
                    Some(issuer_hint),
                ),
            }
        }
        if let Some(dpop) = self.field::<bool>(
            &mut table,
            "dpop",
            "write dpop = true to always use DPoP-bound tokens (RFC 9449) or dpop = false to never use them; without it, latchkey uses DPoP where the authorization server's metadata offers it",
        ) {
            oauth.dpop = Some(dpop.into_inner());
        }
        OAuth::Enabled(oauth)
    }

    /// `client_secret`, `client_secret_env` or `client_secret_file`, given once.
    pub(super) fn client_secret(
        &mut self,
        table: &mut DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let secret_hint = "give the secret once: client_secret, client_secret_env (a variable name) or client_secret_file (a path)";
        let sources = [
            self.field::<String>(table, "client_secret", secret_hint)
                .map(|v| (v.span(), Ok(Secret::new(v.into_inner())))),
            self.field::<String>(table, "client_secret_env", secret_hint)
                .map(|v| {
                    let value = env(v.get_ref())
                        .map(Secret::new)
                        .ok_or_else(|| format!("environment variable {} is not set", v.get_ref()));
                    (v.span(), value)
                }),
            self.field::<String>(table, "client_secret_file", secret_hint)
                .map(|v| {
                    let path = self.relative(v.get_ref());
                    let value = std::fs::read_to_string(&path)
                        .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])))
                        .map_err(|e| {
                            format!("cannot read client_secret_file {}: {e}", path.display())
                        });
                    (v.span(), value)
                }),
        ];
        let given: Vec<_> = sources.into_iter().flatten().collect();
        if given.len() > 1 {
            self.error(
                given[1].0.clone(),
                "client_secret is given more than once",
                Some(secret_hint),
            );
        }
        let (span, value) = given.into_iter().next()?;
        match value {
            Ok(secret) => Some(secret),
            Err(message) => {
                self.error(span, message, Some(secret_hint));
                None
            }
        }
    }

    /// `private_key_file` or `private_key_env` (PKCS#8 PEM), with `signing_alg` and
    /// `key_id`. The key is parsed here, so a bad one is a config error, not a failed
    /// login later; its text never appears in a message.
    pub(super) fn private_key(
        &mut self,
        table: &mut DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Arc<SigningKey>> {
        let hint = "give the key once: private_key_file (a path to a PKCS#8 PEM file) or private_key_env (a variable holding the PEM)";
        let file = self
            .field::<String>(table, "private_key_file", hint)
            .map(|v| {
                let path = self.relative(v.get_ref());
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read private_key_file {}: {e}", path.display()));
                (v.span(), text)
            });
        let var = self
            .field::<String>(table, "private_key_env", hint)
            .map(|v| {
                let text = env(v.get_ref())
                    .ok_or_else(|| format!("environment variable {} is not set", v.get_ref()));
                (v.span(), text)
            });
        let alg = self
            .field::<String>(
                table,
                "signing_alg",
                "one of ES256, ES384, RS256, PS256, EdDSA",
            )
            .and_then(|name| match Algorithm::parse(name.get_ref()) {
                Some(alg) => Some(alg),
                None => {
                    self.error(
                        name.span(),
                        format!("unknown signing_alg {:?}", name.get_ref()),
                        Some(&format!("use one of {}", Algorithm::NAMES.join(", "))),
                    );
                    None
                }
            });
        let key_id = self
            .field::<String>(table, "key_id", "the `kid` your key is registered under")
            .map(Spanned::into_inner);
        let (span, text) = match (file, var) {
            (Some(_), Some((span, _))) => {
                self.error(span, "the private key is given more than once", Some(hint));
                return None;
            }
            (Some(given), None) | (None, Some(given)) => given,
            (None, None) => return None,
        };
        let parsed =
            text.and_then(|pem| SigningKey::from_pem(&pem, alg, key_id).map_err(|e| e.to_string()));
        match parsed {
            Ok(key) => Some(Arc::new(key)),
            Err(message) => {
                self.error(span, message, Some(hint));
                None
            }
        }
    }
}
