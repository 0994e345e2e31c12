//! The control panel: `GET /` for a browser, drawn from the JSON of `view.rs`. One
//! card per server (its state, what it means and the fix, the token's issuer,
//! scopes and expiry, its traffic, the Sign in and Sign out buttons), and under each
//! the ways to connect a client. Everything shown is escaped; the page loads
//! nothing from elsewhere (its style and script are inline, allowed by hash), so it
//! works offline.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::AUTHORIZE_PATH;

const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The page's Content-Security-Policy: its own style and script, by hash, and
/// fetches of latchkey itself (the live updates); nothing else.
pub(super) fn csp() -> HeaderValue {
    static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
        let hash = |text: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
        };
        HeaderValue::try_from(format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            hash(SCRIPT),
            hash(STYLE),
        ))
        .expect("base64 is a valid header value")
    });
    CSP.clone()
}

pub(super) fn render(servers: &[Value], csrf: &str) -> String {
    let mut cards = String::new();
    for server in servers {
        card(&mut cards, server, csrf);
    }
    let count = match servers.len() {
        1 => "1 server".to_owned(),
        n => format!("{n} servers"),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\
<title>latchkey · {count}</title><style>{STYLE}</style></head><body>\n\
<header class=\"top\"><h1>latchkey</h1><p>{version} · {count}</p><p id=\"connection\" aria-live=\"polite\"></p></header>\n\
<div id=\"announce\" class=\"sr-only\" role=\"status\" aria-live=\"polite\"></div>\n\
<main>\n{cards}</main>\n<script>{SCRIPT}</script>\n</body></html>\n",
        version = escape(env!("CARGO_PKG_VERSION")),
    )
}

fn card(out: &mut String, server: &Value, csrf: &str) {
    let text = |value: &Value| escape(value.as_str().unwrap_or(""));
    let name = text(&server["name"]);
    let auth = &server["auth"];
    let summary = &server["summary"];
    let state = text(&summary["state"]);
    let _ = write!(
        out,
        "<section class=\"server\" data-server=\"{name}\" aria-labelledby=\"server-{name}\">\n\
<div data-live=\"{name}\" data-state=\"{state}\">\n\
<div class=\"head\"><h2 id=\"server-{name}\">{name}</h2><span class=\"badge {state}\">{label}</span></div>\n",
        label = text(&summary["text"]),
    );
    if let Some(detail) = summary["detail"].as_str() {
        let _ = writeln!(
            out,
            "<p class=\"detail\">{}</p>",
            commands(&escape(&sentence(detail)))
        );
    }
    if let Some(fix) = summary["fix"].as_str() {
        let _ = writeln!(
            out,
            "<p class=\"fix\"><strong>Fix:</strong> {}</p>",
            commands(&escape(fix))
        );
    }
    if let Some(notice) = auth["notice"].as_str() {
        let _ = writeln!(out, "<p class=\"notice\">{}</p>", escape(notice));
    }
    out.push_str("<dl>\n");
    let mut fact = |term: &str, value: String| {
        let _ = writeln!(out, "<dt>{term}</dt><dd>{value}</dd>");
    };
    fact(
        "Server",
        format!(
            "<code>{}</code> · {}",
            text(&server["upstream"]),
            text(&server["transport"])
        ),
    );
    // A server that answers without a sign-in has no issuer to show.
    if auth["oauth"] == true && (state != "no_sign_in_needed" || auth["issuer"].is_string()) {
        fact(
            "Issuer",
            auth["issuer"]
                .as_str()
                .map_or_else(|| "not known yet".to_owned(), escape),
        );
        if let Some(scopes) = auth["scopes"].as_array() {
            let scopes: Vec<_> = scopes.iter().filter_map(Value::as_str).collect();
            fact(
                "Scopes",
                if scopes.is_empty() {
                    "none named".into()
                } else {
                    escape(&scopes.join(" "))
                },
            );
        }
        if auth["signed_in"] == true {
            fact(
                "Token expires",
                auth["expires_at"].as_u64().map_or_else(
                    || "not said by the server".to_owned(),
                    |at| format!("<span data-expires-at=\"{at}\">at {}</span>", date(at)),
                ),
            );
            fact(
                "Refresh token",
                if auth["unattended"] == true {
                    "not needed: new tokens come without you".into()
                } else if auth["refresh_token_held"] == true {
                    "held: the token is renewed without you".into()
                } else {
                    "none: the next expiry needs you to sign in".into()
                },
            );
        }
    }
    let traffic = &server["traffic"];
    fact(
        "Last request",
        match (
            traffic["last_request"]["at"].as_u64(),
            traffic["last_request"]["status"].as_u64(),
        ) {
            (Some(at), Some(status)) => format!(
                "<span data-at=\"{at}\">at {}</span> · HTTP {status}",
                date(at)
            ),
            _ => "none since latchkey started".into(),
        },
    );
    fact(
        "Since start",
        match traffic["requests"].as_u64().unwrap_or(0) {
            1 => "1 request".to_owned(),
            n => format!("{n} requests"),
        } + &format!(", {} failed", traffic["errors"].as_u64().unwrap_or(0)),
    );
    out.push_str("</dl>\n");
    buttons(out, server, &name, &state, csrf);
    out.push_str("</div>\n");
    connect(out, server, &name);
    out.push_str("</section>\n");
}

/// The summary's button ("Sign in", or "Get a token" where no person is needed),
/// "Sign out" wherever a token is held; while a login waits, only the way to its page.
fn buttons(out: &mut String, server: &Value, name: &str, state: &str, csrf: &str) {
    let auth = &server["auth"];
    if auth["oauth"] != true {
        return;
    }
    out.push_str("<div class=\"actions\">");
    if let Some(sign_in) = auth["sign_in"].as_str() {
        let _ = write!(
            out,
            "<a class=\"button\" href=\"{}\" target=\"_blank\" rel=\"noopener\">Open the sign-in page</a>",
            escape(sign_in)
        );
    } else if let Some(button) = server["summary"]["button"].as_str() {
        let (label, aria) = match button {
            "get_token" => ("Get a token", format!("Get a token for {name}")),
            _ => ("Sign in", format!("Sign in to {name}")),
        };
        let action = AUTHORIZE_PATH.replace("{server}", name);
        form(out, &action, csrf, "", label, &aria);
    }
    // Not while a login waits: the sign-out would wait for it to end.
    if let Some(sign_out) = auth["sign_out"].as_str().filter(|_| state != "signing_in") {
        let action = escape(sign_out);
        form(
            out,
            &action,
            csrf,
            "danger",
            "Sign out",
            &format!("Sign out of {name}"),
        );
    }
    out.push_str("</div>\n");
}

/// A button that posts the anti-CSRF token to `action`; `aria` names the server too,
/// as every card has the same buttons. `action` and `aria` are escaped already.
fn form(out: &mut String, action: &str, csrf: &str, class: &str, label: &str, aria: &str) {
    let _ = write!(
        out,
        "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" class=\"{class}\" aria-label=\"{aria}\">{label}</button></form>",
        csrf = escape(csrf),
    );
}

/// The local URL with a Copy button, and each client's snippets in both forms.
fn connect(out: &mut String, server: &Value, name: &str) {
    out.push_str("<details class=\"connect\"><summary>Connect a client</summary>\n");
    match server["local_url"].as_str() {
        Some(url) => {
            let _ = writeln!(
                out,
                "<p class=\"where\"><label for=\"url-{name}\">Local URL (needs <code>latchkey serve</code> running)</label></p>\
<div class=\"copy\"><input id=\"url-{name}\" readonly value=\"{}\"><button type=\"button\" class=\"quiet\" data-copy=\"url-{name}\" aria-label=\"Copy the local URL of {name}\">Copy</button></div>",
                escape(url)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "<p class=\"where\">This server has a key URL, never shown here: <code>latchkey url {name}</code> prints it.</p>"
            );
        }
    }
    let mut client = "";
    for (i, snippet) in server["snippets"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |key: &str| snippet[key].as_str().unwrap_or("");
        if field("client") != client {
            client = field("client");
            let _ = writeln!(out, "<h3>{}</h3>", escape(client));
        }
        let form = match field("form") {
            "endpoint" => "Local endpoint",
            _ => "latchkey stdio",
        };
        let id = format!("snippet-{name}-{i}");
        let _ = writeln!(
            out,
            "<p class=\"where\" id=\"{id}-where\">{form} · {place}</p>\
<div class=\"copy\" data-client=\"{client}\" data-form=\"{form_key}\" data-place=\"{place}\"><pre id=\"{id}\" aria-labelledby=\"{id}-where\">{text}</pre>\
<button type=\"button\" class=\"quiet\" data-copy=\"{id}\" aria-label=\"Copy the {client} snippet ({form})\">Copy</button></div>",
            client = escape(client),
            form_key = escape(field("form")),
            place = escape(field("place")),
            text = escape(field("text")),
        );
    }
    out.push_str("</details>\n");
}

/// `text` (a reason from the OAuth layer, an error) beginning as a sentence does.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// `escaped` with each `command` in backticks set as code.
fn commands(escaped: &str) -> String {
    let mut out = String::new();
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// A Unix time as HTTP writes dates, for a page without script; the script turns
/// it into a countdown.
fn date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What an upstream or authorization server says (an error, an issuer, scopes)
    /// reaches the page as text, never as markup.
    #[test]
    fn server_text_is_escaped_everywhere() {
        let hostile = "<img src=x onerror=alert(1)>\"'";
        let server = json!({
            "name": "notes",
            "upstream": hostile,
            "transport": "auto",
            "local_url": format!("http://127.0.0.1:1/notes?{hostile}"),
            "summary": { "state": "error", "text": "Error", "detail": hostile, "fix": "run `latchkey doctor`" },
            "auth": { "oauth": true, "signed_in": true, "issuer": hostile, "scopes": [hostile],
                      "expires_at": 1, "notice": hostile, "sign_out": "/.latchkey/sign-out/notes" },
            "traffic": { "requests": 1, "errors": 1, "last_request": { "at": 1, "status": 502 } },
            "snippets": [{ "client": hostile, "place": hostile, "form": "endpoint", "text": hostile }],
        });
        let page = render(&[server], "token\"><script>");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("\"><script>"), "{page}");
        assert_eq!(page.matches("<script>").count(), 1, "only the page's own");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;"));
        assert!(page.contains("run <code>latchkey doctor</code>"));
    }
}
