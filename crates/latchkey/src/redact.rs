//! What may be shown of text that may hold a secret or came from the network: URLs
//! without their query (whose values may be API keys) or user info, and text with
//! its control characters escaped, so that a server's string cannot split a log
//! line or drive a terminal. A leaf: every module may use it.

use url::Url;

/// The URL without its query string, whose values may be API keys, and without
/// user info.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("…"));
    }
    // Cannot fail for http(s) URLs, the only ones the config accepts.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A `fmt::Write` that writes control characters (C0, DEL, C1) as Rust escapes.
pub(crate) struct Escaped<W>(pub(crate) W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<W> {
    fn write_str(&mut self, mut text: &str) -> std::fmt::Result {
        while let Some(at) = text.find(char::is_control) {
            self.0.write_str(&text[..at])?;
            let c = text[at..].chars().next().unwrap_or_default();
            write!(self.0, "{}", c.escape_default())?;
            text = &text[at + c.len_utf8()..];
        }
        self.0.write_str(text)
    }
}

/// `text` with control characters escaped, for a terminal.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = std::fmt::Write::write_str(&mut Escaped(&mut out), text);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_and_user_info_are_not_shown() {
        let url = url::Url::parse("https://user:pw@mcp.example.com/mcp?key=K").expect("url");
        assert_eq!(
            super::redacted(&url),
            "https://mcp.example.com/mcp?%E2%80%A6"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::escape_controls("bad\nFAKE level=INFO \u{1b}[2J\u{9b}31m\tok é"),
            "bad\\nFAKE level=INFO \\u{1b}[2J\\u{9b}31m\\tok é"
        );
    }
}
