//! The JWT bearer authorization grant (RFC 7523 §2.1): a signed JWT that someone
//! else issued is traded for an access token at the token endpoint. Two grants use
//! it: workload identity federation (MCP SEP-1933), where the platform a workload
//! runs on issues the JWT (a Kubernetes projected service-account token, a CI job's
//! OIDC token), and Enterprise-Managed Authorization (`enterprise.rs`), where the
//! JWT is an ID-JAG from the enterprise IdP.
//!
//! A workload's assertion is short-lived and rotated by its platform, so it is read
//! again from its file or variable for every grant and never kept past one.

use std::path::PathBuf;

use crate::Secret;
use crate::target::Http;
use crate::token::{self, ClientCredentials, TokenError, TokenSet};

/// RFC 7523 §2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Where an assertion (or a token handed over by another program) is read from,
/// with the config key that named it, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionSource {
    /// A file, read whole, surrounding whitespace dropped.
    File { key: &'static str, path: PathBuf },
    /// An environment variable of this process, read when the grant runs.
    Env { key: &'static str, var: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("cannot read {key} {path}: {cause}; check that the token is mounted or written there")]
    Unreadable {
        key: &'static str,
        path: String,
        cause: String,
    },
    #[error("{key} {path} is empty; the platform has not written the token yet")]
    EmptyFile { key: &'static str, path: String },
    #[error(
        "the environment variable {var} ({key}) is not set or empty in latchkey's environment; set it before latchkey starts, or use the file form of {key}"
    )]
    Unset { key: &'static str, var: String },
}

impl AssertionSource {
    /// The assertion as it is now. Its text never appears in an error.
    pub fn read(&self) -> Result<Secret, AssertionError> {
        match self {
            Self::File { key, path } => {
                let shown = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|e| AssertionError::Unreadable {
                        key,
                        path: shown.clone(),
                        cause: e.kind().to_string(),
                    })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(AssertionError::EmptyFile { key, path: shown });
                }
                Ok(Secret::new(text))
            }
            Self::Env { key, var } => std::env::var(var)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(Secret::new)
                .ok_or_else(|| AssertionError::Unset {
                    key,
                    var: var.clone(),
                }),
        }
    }
}

/// The grant (RFC 7523 §2.1), with `scope` and `resource` (RFC 8707). `client`
/// authenticates as the authorization server wants, where one is configured; without
/// one the assertion alone identifies the caller (RFC 7523 §3.1).
pub async fn grant(
    http: &Http,
    endpoint: &str,
    client: Option<&ClientCredentials>,
    assertion: &Secret,
    scopes: &[String],
    resource: Option<&str>,
) -> Result<TokenSet, TokenError> {
    let scope = scopes.join(" ");
    let mut form = vec![
        ("grant_type", GRANT_TYPE),
        ("assertion", assertion.expose()),
    ];
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    token::grant(http, endpoint, client, &form, scopes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_again_each_time_and_errors_name_the_key_not_the_value() {
        let dir = std::env::temp_dir().join(format!("latchkey-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        let source = AssertionSource::File {
            key: "assertion_file",
            path: path.clone(),
        };
        let e = source.read().expect_err("missing");
        assert!(
            e.to_string().starts_with("cannot read assertion_file "),
            "{e}"
        );
        std::fs::write(&path, "first.jwt\n").expect("write");
        assert_eq!(source.read().expect("read").expose(), "first.jwt");
        std::fs::write(&path, "second.jwt").expect("write");
        assert_eq!(source.read().expect("read").expose(), "second.jwt");
        std::fs::write(&path, "  \n").expect("write");
        assert!(matches!(
            source.read(),
            Err(AssertionError::EmptyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("clean");

        let unset = AssertionSource::Env {
            key: "assertion_env",
            var: "LATCHKEY_TEST_SURELY_UNSET_VAR".into(),
        };
        let e = unset.read().expect_err("unset").to_string();
        assert!(
            e.contains("LATCHKEY_TEST_SURELY_UNSET_VAR") && e.contains("assertion_env"),
            "{e}"
        );
    }
}
