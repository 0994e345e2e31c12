//! A server's `grant` and the keys that belong to one grant only: `assertion_file`
//! or `assertion_env` for the JWT bearer grant of workload identity (RFC 7523 §2.1,
//! MCP SEP-1933).

use latchkey_auth::jwt_bearer::AssertionSource;
use latchkey_auth::session::Grant;
use std::ops::Range;
use toml::de::DeTable;

use super::check::Checker;

const GRANT_HINT: &str = "write grant = \"authorization_code\" (a person logs in), \"client_credentials\" (a machine client) or \"jwt-bearer\" (a workload with a token from its platform)";
const ASSERTION_HINT: &str = "give the workload's token once: assertion_file (a path, such as a Kubernetes projected service-account token) or assertion_env (the name of a variable holding it)";

impl Checker<'_> {
    /// `grant` with the keys of the chosen grant. `span` is the oauth table's.
    pub(super) fn grant(
        &mut self,
        table: &mut DeTable<'_>,
        span: Range<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Grant {
        let grant = self.field::<String>(table, "grant", GRANT_HINT);
        let source = self.assertion_source(table, env);
        let (name, grant_span) = match &grant {
            Some(grant) => (grant.get_ref().as_str(), grant.span()),
            None => ("authorization_code", span),
        };
        let chosen = match name {
            "authorization_code" => Grant::AuthorizationCode,
            "client_credentials" => Grant::ClientCredentials,
            "jwt-bearer" => match &source {
                Some((_, Some(source))) => Grant::JwtBearer(source.clone()),
                // Already reported.
                Some((_, None)) => Grant::AuthorizationCode,
                None => {
                    self.error(
                        grant_span,
                        "grant = \"jwt-bearer\" needs the workload's token",
                        Some(ASSERTION_HINT),
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
            && name != "jwt-bearer"
        {
            self.error(
                key_span.clone(),
                "assertion_file and assertion_env are only used with grant = \"jwt-bearer\"",
                Some("add grant = \"jwt-bearer\", or remove the key"),
            );
        }
        chosen
    }

    /// `assertion_file` or `assertion_env`: where the span is, and the source if it
    /// is usable now. The token is read here only to check it is there; the grant
    /// reads it again each time, since the platform rotates it.
    fn assertion_source(
        &mut self,
        table: &mut DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(Range<usize>, Option<AssertionSource>)> {
        let file = self.field::<String>(table, "assertion_file", ASSERTION_HINT);
        let var = self.field::<String>(table, "assertion_env", ASSERTION_HINT);
        let (span, source) = match (file, var) {
            (Some(_), Some(var)) => {
                self.error(
                    var.span(),
                    "the workload's token is given twice: assertion_file and assertion_env",
                    Some(ASSERTION_HINT),
                );
                return Some((var.span(), None));
            }
            (Some(file), None) => (
                file.span(),
                AssertionSource::File {
                    key: "assertion_file",
                    path: self.relative(file.get_ref()),
                },
            ),
            (None, Some(var)) => {
                if env(var.get_ref()).is_none_or(|v| v.trim().is_empty()) {
                    self.error(
                        var.span(),
                        format!(
                            "environment variable {} (assertion_env) is not set",
                            var.get_ref()
                        ),
                        Some("set it in latchkey's environment, or use assertion_file"),
                    );
                    return Some((var.span(), None));
                }
                (
                    var.span(),
                    AssertionSource::Env {
                        key: "assertion_env",
                        var: var.into_inner(),
                    },
                )
            }
            (None, None) => return None,
        };
        if let AssertionSource::File { .. } = &source
            && let Err(e) = source.read()
        {
            self.error(span.clone(), e.to_string(), Some(ASSERTION_HINT));
            return Some((span, None));
        }
        Some((span, Some(source)))
    }
}
