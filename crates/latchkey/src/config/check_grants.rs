//! A server's `grant` and the keys that belong to one grant only: `assertion_file`
//! or `assertion_env` for the JWT bearer grant of workload identity (RFC 7523 §2.1,
//! MCP SEP-1933), `idp` for Enterprise-Managed Authorization; and the `[idps.NAME]`
//! tables that `idp` names.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use latchkey_auth::enterprise::IdpSettings;
use latchkey_auth::jwt_bearer::AssertionSource;
use latchkey_auth::registration::ConfiguredClient;
use latchkey_auth::session::Grant;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use url::Url;

use super::check::{Checker, is_valid_name};

const GRANT_HINT: &str = "write grant = \"authorization_code\" (a person logs in), \"client_credentials\" (a machine client), \"jwt_bearer\" (a workload with a token from its platform) or \"enterprise\" (a person signed in at the enterprise IdP that idp names)";
const ASSERTION_HINT: &str = "give the workload's token once: assertion_file (a path, such as a Kubernetes projected service-account token) or assertion_env (the name of a variable holding it)";
const IDP_HINT: &str = "write idp = \"NAME\" naming an [idps.NAME] table with issuer and client_id";
const ID_TOKEN_HINT: &str = "give the ID token once: id_token_file (a path) or id_token_env (a variable), kept current by another program; or neither, for a login in the browser";
const IDP_KEYS: &[&str] = &[
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_secret_file",
    "private_key_file",
    "private_key_env",
    "signing_alg",
    "key_id",
    "scopes",
    "redirect_port",
    "id_token_file",
    "id_token_env",
];
/// How long the login at the IdP in the browser may take (as a server's).
const IDP_FLOW_TIMEOUT: Duration = Duration::from_secs(300);

impl Checker<'_> {
    /// `grant` with the keys of the chosen grant. `span` is the oauth table's.
    pub(super) fn grant(
        &mut self,
        table: &mut DeTable<'_>,
        span: Range<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Grant {
        let grant = self.field::<String>(table, "grant", GRANT_HINT);
        let source = self.token_source(
            table,
            env,
            ("assertion_file", "assertion_env"),
            ASSERTION_HINT,
        );
        let idp = self.field::<String>(table, "idp", IDP_HINT);
        let (name, grant_span) = match &grant {
            Some(grant) => (grant.get_ref().as_str(), grant.span()),
            None => ("authorization_code", span),
        };
        let chosen = match name {
            "authorization_code" => Grant::AuthorizationCode,
            "client_credentials" => Grant::ClientCredentials,
            "jwt_bearer" => match &source {
                Some((_, Some(source))) => Grant::JwtBearer(source.clone()),
                // Already reported.
                Some((_, None)) => Grant::AuthorizationCode,
                None => {
                    self.error(
                        grant_span,
                        "grant = \"jwt_bearer\" needs the workload's token",
                        Some(ASSERTION_HINT),
                    );
                    Grant::AuthorizationCode
                }
            },
            "enterprise" => match &idp {
                Some(wanted) => self.idp_named(wanted),
                None => {
                    self.error(
                        grant_span,
                        "grant = \"enterprise\" needs the identity provider to sign in at",
                        Some(IDP_HINT),
                    );
                    Grant::AuthorizationCode
                }
            },
            other => {
                self.error(
                    grant_span,
                    format!("unknown grant {other:?}"),
                    Some(GRANT_HINT),
                );
                return Grant::AuthorizationCode;
            }
        };
        if let Some((key_span, _)) = &source
            && name != "jwt_bearer"
        {
            self.error(
                key_span.clone(),
                "assertion_file and assertion_env are only used with grant = \"jwt_bearer\"",
                Some("add grant = \"jwt_bearer\", or remove the key"),
            );
        }
        if let Some(idp) = &idp
            && name != "enterprise"
        {
            self.error(
                idp.span(),
                "idp is only used with grant = \"enterprise\"",
                Some("add grant = \"enterprise\", or remove the key"),
            );
        }
        chosen
    }

    fn idp_named(&mut self, wanted: &Spanned<String>) -> Grant {
        if let Some(settings) = self.idps.iter().find(|i| i.name == *wanted.get_ref()) {
            return Grant::Enterprise(settings.clone());
        }
        let known: Vec<&str> = self.idps.iter().map(|i| i.name.as_str()).collect();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        self.error(
            wanted.span(),
            format!("no [idps.{}] table; configured: {known}", wanted.get_ref()),
            Some(IDP_HINT),
        );
        Grant::AuthorizationCode
    }

    /// A token read from a file or a variable (`keys`: the key for each): where the
    /// span is, and the source if it is usable now. A file is read here only to
    /// check it is there; the grant reads it again each time, since its issuer
    /// rotates it.
    fn token_source(
        &mut self,
        table: &mut DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
        keys: (&'static str, &'static str),
        hint: &str,
    ) -> Option<(Range<usize>, Option<AssertionSource>)> {
        let (file_key, env_key) = keys;
        let file = self.field::<String>(table, file_key, hint);
        let var = self.field::<String>(table, env_key, hint);
        let (span, source) = match (file, var) {
            (Some(_), Some(var)) => {
                self.error(
                    var.span(),
                    format!("the token is given twice: {file_key} and {env_key}"),
                    Some(hint),
                );
                return Some((var.span(), None));
            }
            (Some(file), None) => (
                file.span(),
                AssertionSource::File {
                    key: file_key,
                    path: self.relative(file.get_ref()),
                },
            ),
            (None, Some(var)) => {
                if env(var.get_ref()).is_none_or(|v| v.trim().is_empty()) {
                    self.error(
                        var.span(),
                        format!(
                            "environment variable {} ({env_key}) is not set",
                            var.get_ref()
                        ),
                        Some(&format!(
                            "set it in latchkey's environment, or use {file_key}"
                        )),
                    );
                    return Some((var.span(), None));
                }
                (
                    var.span(),
                    AssertionSource::Env {
                        key: env_key,
                        var: var.into_inner(),
                    },
                )
            }
            (None, None) => return None,
        };
        if let AssertionSource::File { .. } = &source
            && let Err(e) = source.read()
        {
            self.error(span.clone(), e.to_string(), Some(hint));
            return Some((span, None));
        }
        Some((span, Some(source)))
    }

    /// The top-level `idps` key: `[idps.NAME]` tables, kept for the servers' `idp`.
    pub(super) fn idps(
        &mut self,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        let span = value.span();
        let DeValue::Table(tables) = value.into_inner() else {
            self.error(
                span,
                "`idps` must be a table of identity providers",
                Some("write each as [idps.NAME] with issuer and client_id"),
            );
            return;
        };
        for (name, value) in tables {
            let (name_span, name) = (name.span(), name.into_inner().into_owned());
            if !is_valid_name(&name) {
                self.error(
                    name_span,
                    format!("identity provider name {name:?} is not a plain name"),
                    Some("use letters, digits, '-', '_' and '.'"),
                );
            }
            if let Some(idp) = self.idp(&name, value, env) {
                self.idps.push(Arc::new(idp));
            }
        }
    }

    fn idp(
        &mut self,
        name: &str,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<IdpSettings> {
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.error(
                span,
                format!("idps.{name} must be a table"),
                Some("write it as [idps.NAME] with issuer and client_id"),
            );
            return None;
        };
        self.take_unknown(&mut table, IDP_KEYS, "identity provider keys are");
        let issuer_hint = "the IdP's issuer exactly as its OpenID configuration gives it, such as issuer = \"https://login.example.com\"";
        let issuer = match self.field::<String>(&mut table, "issuer", issuer_hint) {
            Some(issuer) => match Url::parse(issuer.get_ref()) {
                Ok(url) if latchkey_auth::discovery::is_secure(&url) && url.query().is_none() => {
                    Some(issuer.into_inner())
                }
                _ => {
                    self.error(
                        issuer.span(),
                        "issuer must be an https URL (http only on loopback) without a query",
                        Some(issuer_hint),
                    );
                    None
                }
            },
            None => {
                self.error(
                    span.clone(),
                    format!("[idps.{name}] needs issuer"),
                    Some(issuer_hint),
                );
                None
            }
        };
        let client_id = self
            .field::<String>(
                &mut table,
                "client_id",
                "the client id latchkey is registered under at the IdP",
            )
            .map(Spanned::into_inner)
            .filter(|id| !id.trim().is_empty());
        if client_id.is_none() {
            self.error(
                span,
                format!("[idps.{name}] needs client_id"),
                Some("register latchkey at the IdP (a native app with a loopback redirect URI) and write its client_id here"),
            );
        }
        let client_secret = self.client_secret(&mut table, env);
        let private_key = self.private_key(&mut table, env);
        let scopes = self
            .field::<Vec<String>>(
                &mut table,
                "scopes",
                "a list, such as scopes = [\"openid\", \"offline_access\"]",
            )
            .map_or_else(|| vec!["openid".to_owned()], Spanned::into_inner);
        let redirect_port = self
            .field::<u16>(
                &mut table,
                "redirect_port",
                "a port number, such as redirect_port = 33418 (0 picks a free one)",
            )
            .map_or(0, Spanned::into_inner);
        let id_token = self.token_source(
            &mut table,
            env,
            ("id_token_file", "id_token_env"),
            ID_TOKEN_HINT,
        );
        Some(IdpSettings {
            name: name.to_owned(),
            issuer: issuer?,
            client: ConfiguredClient {
                client_id: client_id?,
                client_secret,
                private_key,
            },
            scopes,
            redirect_port,
            id_token: id_token.and_then(|(_, source)| source),
            flow_timeout: IDP_FLOW_TIMEOUT,
        })
    }
}
