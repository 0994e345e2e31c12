//! Which `x-mcp-header` annotations of a tool's `inputSchema` are valid (2026-07-28
//! Streamable HTTP, "Custom Headers from Tool Parameters" / "Schema Extension";
//! server/tools, "x-mcp-header"; SEP-2243). A client on Streamable HTTP must reject
//! a tool with any invalid one: leave it out of `tools/list`, so that one malformed
//! definition does not cost the other tools. The bridge is that client for its stdio
//! client, so it checks here, and `mirror.rs` mirrors only what passes.
//!
//! An annotation is valid when its value is a non-empty RFC 9110 `token` (which
//! rules out spaces, delimiters such as `:`, control characters and non-ASCII),
//! unique among the schema's annotations regardless of case, on a property whose
//! `type` is `string`, `integer` or `boolean` (not `number`, and not a list of
//! types), and statically reachable: through `properties` keys only, never through
//! `items`, composition or conditional keywords, definitions or `$ref`.

use std::fmt;

use serde_json::{Map, Value};

const KEY: &str = "x-mcp-header";

/// The subschema keywords of JSON Schema (2020-12, and draft 7's older names) that
/// lead off the `properties`-only chain: an annotation under any of them makes the
/// tool invalid. Keywords that hold instance data (`const`, `default`, `enum`,
/// `examples`) are not schemas and are not looked into.
const OFF_CHAIN: &[&str] = &[
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "allOf",
    "anyOf",
    "oneOf",
];

/// Off-chain keywords whose value maps names to subschemas.
const OFF_CHAIN_MAPS: &[&str] = &[
    "patternProperties",
    "dependentSchemas",
    "dependencies",
    "$defs",
    "definitions",
];

/// The argument type an annotated property declares: what its header value is
/// converted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    String,
    Integer,
    Boolean,
}

/// One valid annotation: the `{name}` of `Mcp-Param-{name}`, and where its value is
/// in `arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Declaration {
    pub(super) header: String,
    pub(super) path: Vec<String>,
    pub(super) kind: Kind,
}

/// Why a tool is rejected. The texts come from the server: `Display` escapes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Invalid {
    NotAString { at: String },
    Empty { at: String },
    NotAToken { at: String, header: String },
    NotPrimitive { at: String, kind: String },
    Duplicate { header: String, first: String },
    Unreachable { at: String },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let esc = |s: &str| crate::redact::escape_controls(s);
        match self {
            Self::NotAString { at } => write!(f, "{KEY} at {} is not a string", esc(at)),
            Self::Empty { at } => write!(f, "{KEY} at {} is empty", esc(at)),
            Self::NotAToken { at, header } => write!(
                f,
                "{KEY} '{}' at {} is not an HTTP header name token",
                esc(header),
                esc(at)
            ),
            Self::NotPrimitive { at, kind } => write!(
                f,
                "{KEY} at {} is on a property of type {}, not string, integer or boolean",
                esc(at),
                esc(kind)
            ),
            Self::Duplicate { header, first } => write!(
                f,
                "{KEY} '{}' repeats '{}' (header names ignore case)",
                esc(header),
                esc(first)
            ),
            Self::Unreachable { at } => write!(
                f,
                "{KEY} at {} is not reachable through `properties` alone",
                esc(at)
            ),
        }
    }
}

/// The annotations of one tool's `inputSchema`, or the first reason to reject it.
pub(super) fn scan(input_schema: &Value) -> Result<Vec<Declaration>, Invalid> {
    let mut found = Vec::new();
    visit(input_schema, &mut Vec::new(), true, &mut found)?;
    Ok(found)
}

fn visit(
    schema: &Value,
    path: &mut Vec<String>,
    on_chain: bool,
    found: &mut Vec<Declaration>,
) -> Result<(), Invalid> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(header) = schema.get(KEY) {
        found.push(declaration(schema, header, path, on_chain, found)?);
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            path.push(name.clone());
            let visited = visit(property, path, on_chain, found);
            path.pop();
            visited?;
        }
    }
    for (keyword, value) in schema {
        let branches: Vec<&Value> = if OFF_CHAIN_MAPS.contains(&keyword.as_str()) {
            value
                .as_object()
                .map(|m| m.values().collect())
                .unwrap_or_default()
        } else if OFF_CHAIN.contains(&keyword.as_str()) {
            match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            }
        } else {
            continue;
        };
        path.push(format!("<{keyword}>"));
        let visited = branches
            .into_iter()
            .try_for_each(|branch| visit(branch, path, false, found));
        path.pop();
        visited?;
    }
    Ok(())
}

fn declaration(
    schema: &Map<String, Value>,
    header: &Value,
    path: &[String],
    on_chain: bool,
    found: &[Declaration],
) -> Result<Declaration, Invalid> {
    let at = if path.is_empty() {
        "the schema root".to_owned()
    } else {
        path.join(".")
    };
    // The root is no property: its annotation has no argument to mirror.
    if !on_chain || path.is_empty() {
        return Err(Invalid::Unreachable { at });
    }
    let Some(header) = header.as_str() else {
        return Err(Invalid::NotAString { at });
    };
    if header.is_empty() {
        return Err(Invalid::Empty { at });
    }
    if !is_token(header) {
        return Err(Invalid::NotAToken {
            at,
            header: header.to_owned(),
        });
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) if t == "string" => Kind::String,
        Some(Value::String(t)) if t == "integer" => Kind::Integer,
        Some(Value::String(t)) if t == "boolean" => Kind::Boolean,
        other => {
            return Err(Invalid::NotPrimitive {
                at,
                kind: other.map_or_else(|| "(none)".to_owned(), Value::to_string),
            });
        }
    };
    if let Some(first) = found.iter().find(|d| d.header.eq_ignore_ascii_case(header)) {
        return Err(Invalid::Duplicate {
            header: header.to_owned(),
            first: first.header.clone(),
        });
    }
    Ok(Declaration {
        header: header.to_owned(),
        path: path.to_vec(),
        kind,
    })
}

/// RFC 9110 §5.6.2 `token` (`1*tchar`).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(property: Value) -> Result<Vec<Declaration>, Invalid> {
        scan(&json!({"type": "object", "properties": {"p": property}}))
    }

    #[test]
    fn primitive_properties_on_the_properties_chain_are_declared() {
        let found = scan(&json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {
                "tier": {"type": "integer", "x-mcp-header": "Tier"},
                "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}},
            // Values, not schemas: an object there with the key is data.
            "mode": {"type": "string", "default": {"x-mcp-header": "X"}, "enum": [{"x-mcp-header": "Y"}]},
            // A property may be named like the keyword.
            "x-mcp-header": {"type": "string"},
        }}))
        .expect("valid");
        let mut headers: Vec<_> = found
            .iter()
            .map(|d| (d.header.as_str(), d.path.join("."), d.kind))
            .collect();
        headers.sort_by_key(|h| h.0);
        assert_eq!(
            headers,
            [
                ("Dry-Run", "opts.dry".to_owned(), Kind::Boolean),
                ("Region", "region".to_owned(), Kind::String),
                ("Tier", "opts.tier".to_owned(), Kind::Integer),
            ]
        );
        assert_eq!(scan(&json!({"type": "object"})), Ok(vec![]));
        assert_eq!(scan(&Value::Null), Ok(vec![]));
    }

    #[test]
    fn names_must_be_non_empty_tokens() {
        assert!(matches!(
            one(json!({"type": "string", "x-mcp-header": ""})),
            Err(Invalid::Empty { .. })
        ));
        assert!(matches!(
            one(json!({"type": "string", "x-mcp-header": 7})),
            Err(Invalid::NotAString { .. })
        ));
        for bad in [
            "My Region",
            "Region:Primary",
            "Région",
            "Region\t1",
            "a\r\nb",
            "(x)",
        ] {
            assert!(
                matches!(
                    one(json!({"type": "string", "x-mcp-header": bad})),
                    Err(Invalid::NotAToken { .. })
                ),
                "{bad:?}"
            );
        }
        // Any tchar is fine, and a name like a standard header's is its own header.
        for good in ["Method", "a!#$%&'*+-.^_`|~9"] {
            assert!(
                one(json!({"type": "string", "x-mcp-header": good})).is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn only_string_integer_and_boolean_properties() {
        for kind in [
            json!("number"),
            json!("object"),
            json!("array"),
            json!("null"),
            json!(["string", "null"]),
        ] {
            assert!(
                matches!(
                    one(json!({"type": kind, "x-mcp-header": "H"})),
                    Err(Invalid::NotPrimitive { .. })
                ),
                "{kind}"
            );
        }
        assert!(matches!(
            one(json!({"x-mcp-header": "H"})),
            Err(Invalid::NotPrimitive { .. })
        ));
    }

    #[test]
    fn names_are_unique_whatever_their_case() {
        for (a, b) in [("Region", "Region"), ("MyField", "myfield")] {
            let schema = json!({"type": "object", "properties": {
                "f1": {"type": "string", "x-mcp-header": a},
                "f2": {"type": "object", "properties": {"g": {"type": "string", "x-mcp-header": b}}}}});
            assert!(
                matches!(scan(&schema), Err(Invalid::Duplicate { .. })),
                "{a} {b}"
            );
        }
    }

    #[test]
    fn annotations_off_the_properties_chain_reject_the_tool() {
        let s = json!({"type": "string", "x-mcp-header": "H"});
        for schema in [
            json!({"type": "string", "x-mcp-header": "H"}),
            json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {"b": s}}}}}),
            json!({"type": "object", "properties": {"a": {"type": "array", "items": s}}}),
            json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, s]}}}),
            json!({"type": "object", "anyOf": [{"properties": {"a": s}}]}),
            json!({"type": "object", "if": {"properties": {"a": s}}}),
            json!({"type": "object", "additionalProperties": s}),
            json!({"type": "object", "patternProperties": {"^a": s}}),
            json!({"type": "object", "$defs": {"d": s}, "properties": {"a": {"$ref": "#/$defs/d"}}}),
            json!({"type": "object", "properties": {"a": {"not": s}}}),
        ] {
            assert!(
                matches!(scan(&schema), Err(Invalid::Unreachable { .. })),
                "{schema}"
            );
        }
    }

    #[test]
    fn a_reason_shows_the_servers_text_escaped() {
        let invalid = one(json!({"type": "string", "x-mcp-header": "a\nFAKE log line"}))
            .expect_err("invalid");
        let shown = invalid.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("FAKE log line"), "{shown}");
    }
}
