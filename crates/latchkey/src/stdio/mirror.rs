//! The HTTP headers a Streamable HTTP client mirrors from each message (2026-07-28,
//! SEP-2243): `Mcp-Method`, `Mcp-Name` and, for `tools/call`, one `Mcp-Param-{Name}`
//! per argument the tool's input schema marks with `x-mcp-header`. Servers of earlier
//! revisions ignore them, so they are always sent.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";
/// Longer values are not mirrored: servers and proxies commonly refuse header
/// sections over 8 KiB, and a request that fails for its headers helps nobody.
const MAX_VALUE: usize = 4096;

/// For each tool, the arguments to mirror: (header name suffix, path of property
/// names into `arguments`). Learned from `tools/list` results as they pass.
#[derive(Debug, Default)]
pub(crate) struct ToolHeaders {
    tools: HashMap<String, Vec<(String, Vec<String>)>>,
}

impl ToolHeaders {
    /// Records the `x-mcp-header` annotations of a `tools/list` result.
    pub(crate) fn learn(&mut self, result: &Value) {
        let Some(tools) = result["tools"].as_array() else {
            return;
        };
        for tool in tools {
            let Some(name) = tool["name"].as_str() else {
                continue;
            };
            let mut found = Vec::new();
            collect(&tool["inputSchema"], &mut Vec::new(), &mut found);
            if found.is_empty() {
                self.tools.remove(name);
            } else {
                self.tools.insert(name.to_owned(), found);
            }
        }
    }

    fn for_tool(&self, name: &str) -> &[(String, Vec<String>)] {
        self.tools.get(name).map_or(&[], Vec::as_slice)
    }
}

/// Walks `properties` chains, the only statically reachable paths.
fn collect(schema: &Value, path: &mut Vec<String>, found: &mut Vec<(String, Vec<String>)>) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (key, property) in properties {
        path.push(key.clone());
        if let Some(header) = property["x-mcp-header"].as_str()
            && is_token(header)
            && !found.iter().any(|(h, _)| h.eq_ignore_ascii_case(header))
        {
            found.push((header.to_owned(), path.clone()));
        }
        collect(property, path, found);
        path.pop();
    }
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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
    for (header, path) in tools.for_tool(tool) {
        let argument = path
            .iter()
            .fold(&params["arguments"], |value, key| &value[key.as_str()]);
        let text = match argument {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            // Null or absent: no header (SEP-2243).
            _ => continue,
        };
        let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(format!("mcp-param-{header}").as_bytes()),
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
        tools.learn(&json!({"tools": [{"name": "sql", "inputSchema": {"type": "object",
            "properties": {"region": {"type": "string", "x-mcp-header": "Region"},
                           "opts": {"type": "object", "properties": {"tier": {"type": "integer", "x-mcp-header": "Tier"}}},
                           "note": {"type": "string", "x-mcp-header": "Note"},
                           "query": {"type": "string"}}}}]}));
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
}
