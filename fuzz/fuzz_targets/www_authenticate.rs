//! The `WWW-Authenticate` parser (`crates/latchkey-auth/src/challenge.rs`) on any
//! header fields (one per input line). Checks: what it parses, written back in the
//! canonical form, parses the same; two fields joined with ", " (RFC 9110 §5.3) parse
//! as the two did apart, so `BearerChallenge::from_headers` gives the same answer for
//! both; there is one exactly when a Bearer or DPoP challenge is there; scopes are
//! distinct words of the `scope` parameter (of the first such challenge that has one,
//! the Bearer one first).
#![no_main]

use latchkey_auth::BearerChallenge;
use latchkey_auth::challenge::{Challenge, parse};
use libfuzzer_sys::fuzz_target;

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `scheme token68` or `scheme name="value", ...`, challenges joined with ", ".
fn render(challenges: &[Challenge]) -> String {
    let mut out = Vec::new();
    for c in challenges {
        let mut text = c.scheme.clone();
        if let Some(token68) = &c.token68 {
            text.push(' ');
            text.push_str(token68);
        } else if !c.params.is_empty() {
            let params: Vec<_> = c
                .params
                .iter()
                .map(|(name, value)| {
                    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{name}=\"{escaped}\"")
                })
                .collect();
            text.push(' ');
            text.push_str(&params.join(", "));
        }
        out.push(text);
    }
    out.join(", ")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split('\n').collect();
    let mut all = Vec::new();
    let mut rendered = Vec::new();
    for field in &fields {
        let challenges = parse(field);
        for c in &challenges {
            assert!(
                !c.scheme.is_empty() && c.scheme.chars().all(is_tchar),
                "{c:?}"
            );
            for (name, _) in &c.params {
                assert!(!name.is_empty() && name.chars().all(is_tchar), "{c:?}");
                assert_eq!(*name, name.to_ascii_lowercase());
            }
            assert!(c.token68.is_none() || c.params.is_empty(), "{c:?}");
        }
        let canonical = render(&challenges);
        assert_eq!(
            parse(&canonical),
            challenges,
            "{field:?} written as {canonical:?}"
        );
        all.extend(challenges);
        rendered.push(canonical);
    }
    let joined = rendered.join(", ");
    assert_eq!(parse(&joined), all, "fields joined as {joined:?}");

    let bearer = BearerChallenge::from_headers(fields.iter().copied());
    assert_eq!(bearer, BearerChallenge::from_headers([joined.as_str()]));
    let of = |scheme: &str| all.iter().find(|c| c.scheme.eq_ignore_ascii_case(scheme));
    let (first_bearer, first_dpop) = (of("bearer"), of("dpop"));
    assert_eq!(bearer.is_some(), first_bearer.or(first_dpop).is_some());
    assert_eq!(
        bearer.as_ref().and_then(|b| b.dpop.as_ref()).is_some(),
        first_dpop.is_some()
    );
    if let Some(bearer) = bearer {
        let scope = first_bearer
            .into_iter()
            .chain(first_dpop)
            .find_map(|c| c.param("scope"))
            .unwrap_or("");
        let words: Vec<&str> = scope.split_ascii_whitespace().collect();
        for (i, s) in bearer.scopes.iter().enumerate() {
            assert!(words.contains(&s.as_str()), "{s:?} is not in {scope:?}");
            assert!(!bearer.scopes[..i].contains(s), "{s:?} twice");
        }
        assert!(words.iter().all(|w| bearer.scopes.iter().any(|s| s == w)));
    }
});
