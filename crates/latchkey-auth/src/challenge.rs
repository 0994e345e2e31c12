//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1), for the Bearer challenges of RFC 6750,
//! the DPoP challenges of RFC 9449 §7.1 (`algs`, and `error="use_dpop_nonce"` of
//! §9) and the `resource_metadata` parameter of RFC 9728.
//!
//! Written by hand: the header's grammar lets commas separate both challenges and the
//! parameters inside one, and real servers mix quoted and unquoted values, several
//! challenges in one field, and several fields. Crates that split on commas or expect
//! one challenge get this wrong.

/// One challenge: a scheme and its parameters (names lower-cased) or a token68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
    pub token68: Option<String>,
}

impl Challenge {
    /// The value of a parameter, by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What a Bearer or DPoP challenge asks of an OAuth client. A 401 with either scheme
/// leads to the same refresh or login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    /// RFC 9728 §5.1: where the protected resource metadata is.
    pub resource_metadata: Option<String>,
    /// The scopes needed, in order, without duplicates.
    pub scopes: Vec<String>,
    /// RFC 6750 §3.1: `invalid_token`, `insufficient_scope`, ...
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// The DPoP challenge, when there was one (RFC 9449 §7.1).
    pub dpop: Option<DpopChallenge>,
}

/// A DPoP challenge's own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpopChallenge {
    /// The algorithms the resource server accepts proofs in.
    pub algs: Vec<String>,
    /// `invalid_token`, `invalid_dpop_proof`, `use_dpop_nonce`, ...
    pub error: Option<String>,
}

impl BearerChallenge {
    /// The first Bearer or DPoP challenge among all the given header values, if
    /// any, with the DPoP one's parameters. A server may send both; what one of them
    /// lacks (`resource_metadata`, `scope`, `error`) is taken from the other.
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let all: Vec<Challenge> = values.into_iter().flat_map(parse).collect();
        let of = |scheme: &str| all.iter().find(|c| c.scheme.eq_ignore_ascii_case(scheme));
        let (bearer, dpop) = (of("bearer"), of("dpop"));
        let first = bearer.or(dpop)?;
        let param = |name: &str| {
            first
                .param(name)
                .or_else(|| bearer.into_iter().chain(dpop).find_map(|c| c.param(name)))
                .map(str::to_owned)
        };
        Some(Self {
            resource_metadata: param("resource_metadata"),
            scopes: param("scope")
                .as_deref()
                .map(split_scopes)
                .unwrap_or_default(),
            error: param("error"),
            error_description: param("error_description"),
            dpop: dpop.map(|c| DpopChallenge {
                algs: c.param("algs").map(split_scopes).unwrap_or_default(),
                error: c.param("error").map(str::to_owned),
            }),
        })
    }

    /// A DPoP challenge that asks for a (new) nonce (RFC 9449 §9).
    pub fn wants_dpop_nonce(&self) -> bool {
        self.dpop
            .as_ref()
            .is_some_and(|d| d.error.as_deref() == Some("use_dpop_nonce"))
    }

    pub fn is_insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }
}

fn split_scopes(scope: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in scope.split_ascii_whitespace() {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    scopes
}

/// Parses one `WWW-Authenticate` field value into its challenges. Malformed parts are
/// skipped; this never fails or panics, whatever the server sends.
pub fn parse(value: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        p.skip_separators();
        if p.done() {
            return challenges;
        }
        let Some(scheme) = p.token() else {
            // Not a scheme: skip to the next comma and try again.
            p.skip_past_comma();
            continue;
        };
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
            token68: None,
        };
        p.skip_spaces();
        if let Some(token68) = p.token68() {
            challenge.token68 = Some(token68);
        } else {
            // Parameters until one turns out to be the next challenge's scheme.
            loop {
                p.skip_separators();
                let start = p.i;
                let Some(name) = p.token() else { break };
                p.skip_spaces();
                if !p.eat(b'=') {
                    p.i = start;
                    break;
                }
                p.skip_spaces();
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    p.bare_value()
                };
                challenge.params.push((name.to_ascii_lowercase(), value));
            }
        }
        challenges.push(challenge);
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn skip_past_comma(&mut self) {
        while let Some(byte) = self.peek() {
            self.i += 1;
            if byte == b',' {
                return;
            }
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// An unquoted value. The grammar says token, but servers also send bare URLs
    /// (`resource_metadata=https://...`), so take everything up to a comma or space.
    fn bare_value(&mut self) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| !matches!(b, b',' | b' ' | b'\t' | b'"'))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A token68 (`abc+/==`) that stands alone: followed by the end, or a comma.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        {
            self.i += 1;
        }
        let body_end = self.i;
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        let end = self.i;
        self.skip_spaces();
        // `name=value` has '=' then more characters, so it is a parameter, not a token68.
        if body_end > start && matches!(self.peek(), None | Some(b',')) {
            Some(String::from_utf8_lossy(&self.s[start..end]).into_owned())
        } else {
            self.i = start;
            None
        }
    }

    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(byte) = self.peek() {
            self.i += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(values: &[&str]) -> BearerChallenge {
        BearerChallenge::from_headers(values.iter().copied()).expect("a Bearer challenge")
    }

    #[test]
    fn quoted_and_unquoted_parameters() {
        let quoted = bearer(&[
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", scope="files:read files:write""#,
        ]);
        assert_eq!(
            quoted.resource_metadata.as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(quoted.scopes, ["files:read", "files:write"]);
        let bare = bearer(&[
            "bearer error=insufficient_scope,scope=admin , resource_metadata=https://x.example/prm",
        ]);
        assert!(bare.is_insufficient_scope());
        assert_eq!(bare.scopes, ["admin"]);
        assert_eq!(
            bare.resource_metadata.as_deref(),
            Some("https://x.example/prm")
        );
    }

    #[test]
    fn several_challenges_in_one_field_and_across_fields() {
        let value = r#"Basic realm="a, b", Negotiate YWJj==, Bearer realm="mcp", error="invalid_token", error_description="The \"token\" expired""#;
        let all = parse(value);
        let schemes: Vec<_> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Negotiate", "Bearer"]);
        assert_eq!(all[0].param("realm"), Some("a, b"));
        assert_eq!(all[1].token68.as_deref(), Some("YWJj=="));
        let b = bearer(&[value]);
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
        assert_eq!(
            b.error_description.as_deref(),
            Some(r#"The "token" expired"#)
        );
        let across = bearer(&["Basic realm=x", "Bearer scope=\"a b a\""]);
        assert_eq!(across.scopes, ["a", "b"], "duplicates dropped, order kept");
    }

    #[test]
    fn no_bearer_and_garbage_never_panic() {
        assert_eq!(BearerChallenge::from_headers(["Basic realm=\"x\""]), None);
        assert_eq!(bearer(&["Bearer"]), BearerChallenge::default());
        for junk in [
            "",
            ",,,",
            "=",
            "\"",
            "Bearer =",
            "Bearer scope=\"unterminated",
            "Bearer a=b=c, ,=,\"x",
            "Bearer \u{fe0f}=1",
            "Bearer ,scope=x",
        ] {
            let _ = parse(junk);
        }
        assert_eq!(bearer(&["Bearer ,scope=x"]).scopes, ["x"]);
        // A cheap fuzz: every prefix of a tricky header parses.
        let tricky = r#"Basic realm="a\"b", Bearer  scope = "x y" ,error=insufficient_scope, DPoP algs="ES256""#;
        for end in 0..=tricky.len() {
            let _ = parse(&tricky[..end]);
        }
        assert!(bearer(&[tricky]).is_insufficient_scope());
        assert_eq!(bearer(&[tricky]).scopes, ["x", "y"]);
    }

    #[test]
    fn dpop_challenges_alone_and_beside_bearer() {
        let alone = bearer(&[
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof", resource_metadata="https://rs.example/prm""#,
        ]);
        assert!(alone.wants_dpop_nonce());
        assert_eq!(alone.error.as_deref(), Some("use_dpop_nonce"));
        assert_eq!(
            alone.resource_metadata.as_deref(),
            Some("https://rs.example/prm")
        );
        let both = bearer(&[
            r#"Bearer resource_metadata="https://rs.example/prm", scope="a""#,
            r#"DPoP algs="ES256 EdDSA", error="invalid_token""#,
        ]);
        assert_eq!(
            both.resource_metadata.as_deref(),
            Some("https://rs.example/prm")
        );
        assert_eq!(
            both.error.as_deref(),
            Some("invalid_token"),
            "from the DPoP one"
        );
        let dpop = both.dpop.as_ref().expect("a DPoP challenge");
        assert_eq!(dpop.algs, ["ES256", "EdDSA"]);
        assert!(!both.wants_dpop_nonce());
        assert_eq!(bearer(&["Bearer"]).dpop, None);
    }
}
