//! The `[servers.NAME]` table: its keys, its `url` and its `headers`.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};
use toml::Spanned;
use toml::de::DeValue;
use url::Url;

use super::check::{Checker, FRAMING_HEADERS, SERVER_KEYS, is_valid_name};
use super::load::substitute_env;
use super::{OAuth, OAuthConfig, Server, Transport, request_uri};

impl Checker<'_> {
    pub(super) fn server(
        &mut self,
        name: Spanned<toml::de::DeString<'_>>,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Server> {
        let name_span = name.span();
        let name = name.into_inner().into_owned();
        if !is_valid_name(&name) {
            self.error(
                name_span.clone(),
                format!("server name {name:?} cannot be used as a URL path segment"),
                Some("use letters, digits, '-', '_' and '.', not starting with '.'"),
            );
        } else if name == crate::local_key::RESERVED_NAME {
            self.error(
                name_span.clone(),
                format!(
                    "server name {name:?} is reserved: key URLs (local_key) start with /{name}/"
                ),
                Some("choose another name for this server"),
            );
        }
        let value_span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.error(
                value_span,
                format!("server {name:?} must be a table"),
                Some("write it as [servers.NAME] with a url key"),
            );
            return None;
        };
        self.take_unknown(&mut table, SERVER_KEYS, "a server's keys are");
        let url = self.field::<String>(
            &mut table,
            "url",
            "write url = \"https://mcp.example.com/mcp\"",
        );
        let transport = self
            .field::<Transport>(
                &mut table,
                "transport",
                "transport is one of \"auto\", \"streamable-http\" or \"sse\"",
            )
            .map(Spanned::into_inner)
            .unwrap_or_default();
        let local_key = self
            .field::<bool>(
                &mut table,
                "local_key",
                "write local_key = true to serve this server only at its key URL (`latchkey url NAME`)",
            )
            .is_some_and(Spanned::into_inner);
        let headers = match table.remove("headers") {
            Some(headers) => self.headers(headers, env),
            None => Vec::new(),
        };
        let oauth = match table.remove("oauth") {
            None => OAuth::Enabled(OAuthConfig::default()),
            Some(value) => self.oauth(value, env),
        };
        let url = match url {
            Some(url) => self.url(&name, &url),
            None => {
                self.error(
                    name_span,
                    format!("server {name:?} has no url"),
                    Some("add url = \"https://mcp.example.com/mcp\" to the table"),
                );
                None
            }
        };
        let (url, uri) = url?;
        Some(Server {
            login_command: format!("latchkey login {name}"),
            config_file: None,
            name,
            url,
            uri,
            transport,
            headers,
            oauth,
            local_key,
            adhoc: false,
        })
    }

    pub(super) fn url(&mut self, name: &str, raw: &Spanned<String>) -> Option<(Url, http::Uri)> {
        let problem = match Url::parse(raw.get_ref()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!(
                    "server {name:?}: url scheme must be http or https, not {:?}",
                    url.scheme()
                )
            }
            Ok(url) if url.host().is_none() => format!("server {name:?}: url has no host"),
            Ok(url) if url.fragment().is_some() => {
                format!("server {name:?}: url must not have a #fragment")
            }
            Ok(url) => match request_uri(&url) {
                Ok(uri) => return Some((url, uri)),
                Err(problem) => format!("server {name:?}: {problem}"),
            },
            // The text may hold a key in its query string, so it is not quoted.
            Err(e) => format!("server {name:?}: url is not a URL: {e}"),
        };
        self.error(
            raw.span(),
            problem,
            Some("write the remote MCP endpoint, such as url = \"https://mcp.example.com/mcp\""),
        );
        None
    }

    pub(super) fn headers(
        &mut self,
        raw: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let span = raw.span();
        let DeValue::Table(table) = raw.into_inner() else {
            self.error(
                span,
                "`headers` must be a table of header names and values",
                Some("write headers = { \"X-Api-Key\" = \"${MY_API_KEY}\" }"),
            );
            return Vec::new();
        };
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        // In file order, so that a duplicate is reported where it is repeated.
        for (key, value) in table {
            let key_span = key.span();
            let key = key.into_inner();
            let value_span = value.span();
            let Some(value) = value.get_ref().as_str().map(str::to_owned) else {
                self.error(
                    value_span,
                    format!("header {key:?}: the value must be a string"),
                    Some("quote it, such as \"X-Api-Key\" = \"${MY_API_KEY}\""),
                );
                continue;
            };
            let value = Spanned::new(value_span, value);
            let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
                self.error(
                    key_span,
                    format!("header name {key:?} is not a valid HTTP header name"),
                    Some("header names are ASCII tokens such as \"X-Api-Key\""),
                );
                continue;
            };
            if FRAMING_HEADERS.contains(&name.as_str()) {
                self.error(
                    key_span,
                    format!("header {key:?} cannot be configured: latchkey sets it for each request (it frames the message or names the connection, so a fixed value would send requests to the wrong host or cut their bodies)"),
                    Some("remove it; to reach another host, change the server's url"),
                );
                continue;
            }
            if !seen.insert(name.clone()) {
                self.error(
                    key_span,
                    format!("header {key:?} is given twice (header names are case-insensitive)"),
                    Some("keep one of them"),
                );
                continue;
            }
            let secret = match substitute_env(value.get_ref(), env) {
                Ok(secret) => secret,
                Err(message) => {
                    self.error(
                        value.span(),
                        format!("header {key:?}: {message}"),
                        Some("export the variable before starting latchkey (for the systemd unit, use Environment= or EnvironmentFile=), or write $${ for a literal ${"),
                    );
                    continue;
                }
            };
            match HeaderValue::from_str(secret.expose()) {
                Ok(mut header) => {
                    header.set_sensitive(true);
                    headers.push((name, header));
                }
                Err(_) => self.error(
                    value.span(),
                    format!("header {key:?}: the value has characters not allowed in an HTTP header (such as a newline)"),
                    None,
                ),
            }
        }
        headers
    }
}
