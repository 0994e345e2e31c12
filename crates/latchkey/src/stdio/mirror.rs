//! The HTTP headers a Streamable HTTP client mirrors from each message (2026-07-28,
//! SEP-2243): `Mcp-Method`, `Mcp-Name` and, for `tools/call`, one `Mcp-Param-{Name}`
//! per argument the tool's input schema marks with `x-mcp-header`. Servers of earlier
//! revisions ignore them, so they are always sent.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::tool_headers::{self, Declaration, Invalid, Kind};

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";
/// Longer values are not mirrored: servers and proxies commonly refuse header
/// sections over 8 KiB, and a request that fails for its headers helps nobody.
const MAX_VALUE: usize = 4096;

/// For each tool, the arguments to mirror, and the tools rejected for invalid
/// annotations (`tool_headers.rs`). Learned from `tools/list` results as they pass.
#[derive(Debug, Default)]
pub(crate) struct ToolHeaders {
    tools: HashMap<String, Vec<Declaration>>,
    rejected: HashMap<String, Invalid>,
}

impl ToolHeaders {
    /// Records the `x-mcp-header` annotations of a `tools/list` result, and takes the
    /// tools with invalid ones out of it (each logged the first time, with the
    /// reason). Returns whether it took any out.
    pub(crate) fn learn(&mut self, result: &mut Value, server: &str) -> bool {
        let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = tools.len();
        tools.retain(|tool| {
            let Some(name) = tool["name"].as_str() else {
                return true;
            };
            match tool_headers::scan(&tool["inputSchema"]) {
                Ok(found) => {
                    self.rejected.remove(name);
                    if found.is_empty() {
                        self.tools.remove(name);
                    } else {
                        self.tools.insert(name.to_owned(), found);
                    }
                    true
                }
                Err(why) => {
                    self.tools.remove(name);
                    if self.rejected.get(name) != Some(&why) {
                        tracing::debug!(
                            server = %server,
                            tool = %crate::redact::escape_controls(name),
                            reason = %why,
                            "leaving a tool out of tools/list: its x-mcp-header annotations are invalid"
                        );
                        self.rejected.insert(name.to_owned(), why);
                    }
                    false
                }
            }
        });
        tools.len() != before
    }

    /// Why `tool` was left out of `tools/list`, if it was.
    pub(crate) fn rejected(&self, tool: &str) -> Option<&Invalid> {
        self.rejected.get(tool)
    }

    fn for_tool(&self, name: &str) -> &[Declaration] {
        self.tools.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The largest integer a JSON number carries exactly in every implementation
/// (IEEE 754 double): the range the spec allows mirrored integers.
const SAFE_INTEGER: u64 = (1 << 53) - 1;

/// An argument as its header's text (the spec's type conversion), for the type its
/// property declares; `None` (no header) for null, absent, or a value of another type,
/// which has no conversion (the server's schema check refuses the call anyway).
fn text(argument: &Value, kind: Kind) -> Option<String> {
    match (kind, argument) {
        (Kind::String, Value::String(s)) => Some(s.clone()),
        (Kind::Boolean, Value::Bool(b)) => Some(b.to_string()),
        (Kind::Integer, Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                (i.unsigned_abs() <= SAFE_INTEGER).then(|| i.to_string())
            } else if let Some(u) = n.as_u64() {
                (u <= SAFE_INTEGER).then(|| u.to_string())
            } else {
                // 42.0 is the integer 42 in JSON Schema.
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() <= SAFE_INTEGER as f64).then(|| format!("{f:.0}"))
            }
        }
        _ => None,
    }
}

/// A header value as the spec carries it: plain when it is printable ASCII without
/// surrounding spaces (and does not look like the sentinel), else Base64 in the
/// `=?base64?…?=` sentinel.
fn encode(value: &str) -> Option<HeaderValue> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value
        && !value.starts_with(SENTINEL_PREFIX);
    let text = if plain {
        value.to_owned()
    } else {
        format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            STANDARD.encode(value.as_bytes())
        )
    };
    HeaderValue::from_str(&text).ok()
}

/// Sets the mirror headers for `message` (a request or notification).
pub(crate) fn set(headers: &mut HeaderMap, message: &Value, tools: &ToolHeaders) {
    let Some(method) = message["method"].as_str() else {
        return;
    };
    if let Some(value) = encode(method) {
        headers.insert(HeaderName::from_static("mcp-method"), value);
    }
    let params = &message["params"];
    let name = match method {
        "tools/call" | "prompts/get" => params["name"].as_str(),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            params["uri"].as_str()
        }
        _ => None,
    };
    if let Some(value) = name.and_then(encode) {
        headers.insert(HeaderName::from_static("mcp-name"), value);
    }
    if method != "tools/call" {
        return;
    }
    let Some(tool) = params["name"].as_str() else {
        return;
    };
    for declared in tools.for_tool(tool) {
        let argument = declared
            .path
            .iter()
            .fold(&params["arguments"], |value, key| &value[key.as_str()]);
        let Some(text) = text(argument, declared.kind) else {
            continue;
        };
        let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(format!("mcp-param-{}", declared.header).as_bytes()),
            encode(&text),
        ) else {
            continue;
        };
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn method_name_and_annotated_arguments_are_mirrored() {
        let mut tools = ToolHeaders::default();
        let mut list = json!({"tools": [{"name": "sql", "inputSchema": {"type": "object",
            "properties": {"region": {"type": "string", "x-mcp-header": "Region"},
                           "opts": {"type": "object", "properties": {"tier": {"type": "integer", "x-mcp-header": "Tier"}}},
                           "note": {"type": "string", "x-mcp-header": "Note"},
                           "query": {"type": "string"}}}}]});
        assert!(!tools.learn(&mut list, "test"), "a valid tool stays");
        let mut headers = HeaderMap::new();
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sql",
            "arguments": {"region": "eu-west-1", "opts": {"tier": 3}, "note": "grüße", "query": "select 1"}}});
        set(&mut headers, &call, &tools);
        assert_eq!(headers["mcp-method"], "tools/call");
        assert_eq!(headers["mcp-name"], "sql");
        assert_eq!(headers["mcp-param-region"], "eu-west-1");
        assert_eq!(headers["mcp-param-tier"], "3");
        assert_eq!(
            headers["mcp-param-note"],
            format!("=?base64?{}?=", STANDARD.encode("grüße"))
        );
        assert_eq!(headers.len(), 5, "no header for the unannotated query");

        let mut headers = HeaderMap::new();
        let read = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
            "params": {"uri": "=?base64?looks-like-it"}});
        set(&mut headers, &read, &tools);
        assert_eq!(
            headers["mcp-name"],
            format!("=?base64?{}?=", STANDARD.encode("=?base64?looks-like-it")),
            "a value that looks like the sentinel is encoded too"
        );
    }

    #[test]
    fn each_type_converts_as_the_spec_says_and_other_values_are_not_mirrored() {
        let mut tools = ToolHeaders::default();
        let mut list = json!({"tools": [{"name": "t", "inputSchema": {"type": "object", "properties": {
            "s": {"type": "string", "x-mcp-header": "S"},
            "i": {"type": "integer", "x-mcp-header": "I"},
            "b": {"type": "boolean", "x-mcp-header": "B"}}}}]});
        tools.learn(&mut list, "test");
        let headers = |arguments: Value| {
            let mut headers = HeaderMap::new();
            let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "t", "arguments": arguments}});
            set(&mut headers, &call, &tools);
            ["mcp-param-s", "mcp-param-i", "mcp-param-b"].map(|h| {
                headers
                    .get(h)
                    .map(|v| v.to_str().expect("ASCII").to_owned())
            })
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            headers(json!({"s": "", "i": -7, "b": false})),
            [some(""), some("-7"), some("false")]
        );
        assert_eq!(
            headers(json!({"s": " padded", "i": 42.0, "b": true})),
            [some("=?base64?IHBhZGRlZA==?="), some("42"), some("true")]
        );
        assert_eq!(
            headers(json!({"s": "a\tb", "i": 9_007_199_254_740_991_i64})),
            [some("=?base64?YQli?="), some("9007199254740991"), None],
            "a tab needs Base64; the largest safe integer; an absent argument has no header"
        );
        // Null, a value of another type, a fraction or an unsafe integer: none.
        assert_eq!(
            headers(json!({"s": null, "i": 3.5, "b": "true"})),
            [None, None, None]
        );
        assert_eq!(
            headers(json!({"s": 3, "i": 9_007_199_254_740_992_i64, "b": null})),
            [None, None, None]
        );
        assert_eq!(headers(json!({"i": "42"}))[1], None);
    }

    #[test]
    fn invalid_tools_are_taken_out_of_the_list_and_remembered() {
        let mut tools = ToolHeaders::default();
        let mut list = json!({"tools": [
            {"name": "good", "inputSchema": {"type": "object", "properties": {"r": {"type": "string", "x-mcp-header": "R"}}}},
            {"name": "score", "inputSchema": {"type": "object", "properties": {"n": {"type": "number", "x-mcp-header": "N"}}}},
            {"name": "plain", "inputSchema": {"type": "object"}}]});
        assert!(tools.learn(&mut list, "test"));
        let names: Vec<_> = list["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["good", "plain"]);
        assert!(matches!(
            tools.rejected("score"),
            Some(Invalid::NotPrimitive { .. })
        ));
        assert!(tools.rejected("good").is_none());
        // Fixed in a later list: no longer refused, and mirrored.
        let mut list = json!({"tools": [
            {"name": "score", "inputSchema": {"type": "object", "properties": {"n": {"type": "integer", "x-mcp-header": "N"}}}}]});
        assert!(!tools.learn(&mut list, "test"));
        assert!(tools.rejected("score").is_none());
        assert_eq!(tools.for_tool("score").len(), 1);
    }
}
