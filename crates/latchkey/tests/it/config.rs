//! The config parser: shipped examples, and every-error-at-once diagnostics.

use std::path::{Path, PathBuf};

use latchkey::config::{self, ConfigError, OAuth, OAuthConfig, Transport};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read config dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

fn parse(text: &str) -> Result<config::Config, ConfigError> {
    config::parse(Path::new("latchkey.toml"), text, |name| {
        (name == "PRESENT").then(|| "value".to_owned())
    })
}

fn diagnostics(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid(diagnostics)) => {
            diagnostics.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected diagnostics, got {other:?}"),
    }
}

#[test]
fn every_shipped_config_parses() {
    let mut files = Vec::new();
    toml_files(&repo_root().join("config"), &mut files);
    assert!(files.len() >= 3, "found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        config::parse(&file, &text, |_| Some("placeholder".to_owned()))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn defaults_and_full_server() {
    let config = parse(
        r#"
[servers.a]
url = "https://a.example.com/mcp"

[servers.b]
url = "http://127.0.0.1:3000/sse"
transport = "sse"
oauth = false
headers = { "X-Key" = "k-${PRESENT}-$${literal}" }
"#,
    )
    .expect("valid");
    assert_eq!(config.listen, config::DEFAULT_LISTEN);
    assert_eq!(config.servers[0].name, "a");
    assert_eq!(config.servers[0].transport, Transport::Auto);
    assert_eq!(
        config.servers[0].oauth,
        OAuth::Enabled(OAuthConfig::default())
    );
    let b = &config.servers[1];
    assert_eq!(b.transport, Transport::Sse);
    assert_eq!(b.oauth, OAuth::Disabled);
    assert_eq!(b.headers[0].1, "k-value-${literal}");
    assert!(
        !format!("{b:?}").contains("k-value"),
        "header values are hidden from Debug"
    );
}

#[test]
fn reports_every_error_at_once_with_line_and_column() {
    let errors = diagnostics(
        r#"listen = "0.0.0.0:8931"
colour = "blue"

[servers.good]
url = "https://ok.example.com/mcp"
tranport = "sse"

[servers."bad name"]
url = "ftp://files.example.com"

[servers.env]
url = "https://env.example.com/mcp"
headers = { "X-Key" = "${MISSING_VAR}" }
transport = "websocket"
"#,
    );
    let all = errors.join("\n");
    let expect = [
        ("latchkey.toml:1:10:", "not a loopback address"),
        ("latchkey.toml:1:10:", "allow_non_loopback = true"),
        ("latchkey.toml:2:1:", "unknown key `colour`"),
        ("latchkey.toml:6:1:", "unknown key `tranport`"),
        (
            "latchkey.toml:8:10:",
            "cannot be used as a URL path segment",
        ),
        ("latchkey.toml:9:7:", "url scheme must be http or https"),
        ("latchkey.toml:14:13:", "unknown variant `websocket`"),
    ];
    for (position, text) in expect {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(position) && e.contains(text)),
            "missing {position} {text:?} in:\n{all}"
        );
    }
    assert!(all.contains("hint:"), "{all}");
}

#[test]
fn missing_environment_variable_is_named() {
    let errors = diagnostics(
        "[servers.env]\nurl = \"https://env.example.com/mcp\"\nheaders = { \"X-Key\" = \"Bearer ${MISSING_VAR}\" }\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("latchkey.toml:3:23:"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("environment variable MISSING_VAR is not set"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("hint: export the variable"),
        "{}",
        errors[0]
    );
}

#[test]
fn syntax_errors_have_positions() {
    let errors = diagnostics("[servers.a]\nurl = \"https://a.example.com\n");
    assert!(errors[0].starts_with("latchkey.toml:2:"), "{errors:?}");
}

#[test]
fn duplicate_servers_and_headers_are_refused() {
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a]\nurl = \"https://b.example.com\"\n",
    );
    assert!(
        errors.iter().any(|e| e.starts_with("latchkey.toml:3:")),
        "{errors:?}"
    );
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\nheaders = { \"X-Key\" = \"1\", \"x-key\" = \"2\" }\n",
    );
    assert!(
        errors.iter().any(|e| e.contains("given twice")),
        "{errors:?}"
    );
}

/// `local_key`: a bool per server; the name `k` is taken by key URLs (`/k/<key>/…`).
#[test]
fn local_key_is_a_bool_and_k_is_not_a_server_name() {
    let config = parse(
        "[servers.a]\nurl = \"https://a.example.com\"\nlocal_key = true\n[servers.b]\nurl = \"https://b.example.com\"\n",
    )
    .expect("valid");
    let keyed: Vec<bool> = config.servers.iter().map(|s| s.local_key).collect();
    assert_eq!(keyed, [true, false]);
    let errors = diagnostics(
        "[servers.k]\nurl = \"https://a.example.com\"\n[servers.b]\nurl = \"https://b.example.com\"\nlocal_key = \"yes\"\n",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("latchkey.toml:1:") && errors[0].contains("\"k\" is reserved"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("latchkey.toml:5:") && errors[1].contains("local_key = true"),
        "{errors:?}"
    );
}

/// A configured Host sent `host: evil.invalid` upstream, and Content-Length: 0
/// dropped bodies: headers that frame the request or name the host are refused, each
/// at its own position.
#[test]
fn headers_that_frame_the_request_or_name_the_host_are_refused() {
    let names = [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Trailer",
        "Keep-Alive",
    ];
    for (i, name) in names.iter().enumerate() {
        let errors = diagnostics(&format!(
            "[servers.a]\nurl = \"https://a.example.com\"\nheaders = {{ \"X-Fine\" = \"1\", \"{name}\" = \"evil.invalid\" }}\n"
        ));
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        // The key's own line and column: after `headers = { "X-Fine" = "1", `.
        assert!(
            errors[0].starts_with("latchkey.toml:3:29:")
                && errors[0].contains(&format!("header {name:?} cannot be configured")),
            "{i} {name}: {errors:?}"
        );
    }
}

#[test]
fn non_loopback_listen_needs_explicit_permission() {
    let text = "listen = \"0.0.0.0:8931\"\nallow_non_loopback = true\n[servers.a]\nurl = \"https://a.example.com\"\n";
    assert_eq!(
        parse(text).expect("allowed").listen.to_string(),
        "0.0.0.0:8931"
    );
    assert!(config::check_listen("192.168.1.2:1".parse().expect("addr"), false).is_err());
    assert!(config::check_listen("[::1]:1".parse().expect("addr"), false).is_ok());
}

#[test]
fn no_servers_is_an_error_with_a_hint() {
    let errors = diagnostics("listen = \"127.0.0.1:8931\"\n");
    assert!(
        errors[0].contains("no servers configured") && errors[0].contains("[servers.notes]"),
        "{errors:?}"
    );
}

#[test]
fn user_info_in_a_url_is_refused_without_quoting_it() {
    let errors = diagnostics(
        "[servers.notes]\nurl = \"https://alice:hunter2-secret@mcp.example.com/mcp\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("latchkey.toml:2:7:")
            && errors[0].contains("must not carry user info")
            && errors[0].contains("headers = { Authorization"),
        "{errors:?}"
    );
    assert!(!errors[0].contains("hunter2"), "{errors:?}");
    let ok = parse("[servers.notes]\nurl = \"https://mcp.example.com/mcp?key=1\"\n")
        .expect("a plain URL parses");
    assert_eq!(
        ok.servers[0].uri.to_string(),
        "https://mcp.example.com/mcp?key=1"
    );
}

#[test]
fn oauth_key_must_be_bool_or_table() {
    let errors = diagnostics("[servers.a]\nurl = \"https://a.example.com\"\noauth = \"yes\"\n");
    assert!(
        errors[0].contains("`oauth` must be true, false or a table"),
        "{errors:?}"
    );
    let config = parse(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\nclient_id = \"app\"\nclient_secret_env = \"PRESENT\"\nredirect_port = 33418\nsend_resource = false\nauthorize_params = { access_type = \"offline\", prompt = \"consent\" }\nauth_timeout_secs = 30\nclient_metadata_url = \"https://example.com/latchkey/client.json\"\n",
    )
    .expect("valid oauth table");
    let OAuth::Enabled(oauth) = &config.servers[0].oauth else {
        panic!("enabled")
    };
    assert_eq!(oauth.client_id.as_deref(), Some("app"));
    assert_eq!(
        oauth.client_secret.as_ref().map(|s| s.expose()),
        Some("value")
    );
    assert_eq!(oauth.redirect_port, 33418);
    assert!(!oauth.send_resource);
    assert_eq!(
        oauth.authorize_params,
        [
            ("access_type".to_owned(), "offline".to_owned()),
            ("prompt".to_owned(), "consent".to_owned())
        ]
    );
    assert_eq!(oauth.auth_timeout, std::time::Duration::from_secs(30));
    assert!(
        !format!("{config:?}").contains("value\""),
        "the secret stays masked"
    );
}

#[test]
fn oauth_mistakes_name_the_key() {
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\nclient_id = \"\"\nclient_secret = \"s\"\nclient_secret_env = \"MISSING_SECRET\"\nclient_secret_file = \"/nonexistent/secret\"\nclient_metadata_url = \"http://example.com/c.json\"\nscopes = [\"x\"]\n",
    );
    let all = errors.join("\n");
    for text in [
        "unknown key `scopes`",
        "client_secret is given more than once",
        "a client secret or private key is set but client_id is not",
        "client_metadata_url must be an https URL",
    ] {
        assert!(all.contains(text), "missing {text:?} in:\n{all}");
    }
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\nclient_id = \"x\"\nclient_secret_file = \"no-such-file\"\n",
    );
    assert!(
        errors[0].contains("cannot read client_secret_file") && errors[0].contains("no-such-file"),
        "{errors:?}"
    );
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\nclient_id = \"x\"\nclient_secret_env = \"MISSING_SECRET\"\n",
    );
    assert!(
        errors[0].contains("environment variable MISSING_SECRET is not set"),
        "{errors:?}"
    );
}

#[test]
fn client_credentials_mistakes_name_the_key() {
    let all = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\ngrant = \"password\"\n[servers.b]\nurl = \"https://b.example.com\"\n[servers.b.oauth]\ngrant = \"client_credentials\"\n[servers.c]\nurl = \"https://c.example.com\"\n[servers.c.oauth]\ngrant = \"client_credentials\"\nclient_id = \"m2m\"\n[servers.d]\nurl = \"https://d.example.com\"\n[servers.d.oauth]\nclient_id = \"m2m\"\nprivate_key_env = \"PRESENT\"\nsigning_alg = \"HS256\"\n[servers.e]\nurl = \"https://e.example.com\"\n[servers.e.oauth]\nclient_id = \"m2m\"\nprivate_key_file = \"no-such-key.pem\"\n",
    )
    .join("\n");
    for text in [
        "unknown grant \"password\"",
        "grant = \"client_credentials\" needs a client registered",
        "grant = \"client_credentials\" needs the client to authenticate",
        "unknown signing_alg \"HS256\"",
        "use one of ES256, ES384, RS256, PS256, EdDSA",
        "the private key is not PEM",
        "cannot read private_key_file",
    ] {
        assert!(all.contains(text), "missing {text:?} in:\n{all}");
    }
    // The variable's value ("value") is never quoted back.
    assert!(!all.contains("\"value\""), "{all}");
}

#[test]
fn diagnostics_and_debug_never_show_secrets() {
    let text = "[servers.a]\nurl = \"https://user:hunter2@a.example.com/mcp?api_key=QSECRET\"\n[servers.a.oauth]\nclient_secret = \"OAUTHSECRET\"\n[servers.b]\nurl = \"https://b.example.com:99999/mcp?api_key=QSECRET\"\nheaders = \"Bearer sk-LITERAL-SECRET\"\n";
    let all = diagnostics(text).join("\n");
    for secret in ["QSECRET", "sk-LITERAL-SECRET", "hunter2", "OAUTHSECRET"] {
        assert!(!all.contains(secret), "{secret} in:\n{all}");
    }
    assert!(
        all.contains("latchkey.toml:6:7:") && all.contains("latchkey.toml:7:11:"),
        "{all}"
    );

    let config = parse("[servers.a]\nurl = \"https://a.example.com/mcp?api_key=QSECRET\"\nheaders = { \"X-Key\" = \"HEADERSECRET\" }\n[servers.a.oauth]\nclient_id = \"app\"\nclient_secret = \"OAUTHSECRET\"\n").expect("valid");
    let debug = format!("{config:?}");
    for secret in ["QSECRET", "OAUTHSECRET", "HEADERSECRET"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("a.example.com/mcp"), "{debug}");
}

#[test]
fn one_mistake_does_not_hide_another_in_the_same_table() {
    let errors = diagnostics(
        "listen = 8931\nshutdown_timeout_secs = -1\n[servers.a]\nurl = \"https://a.example.com\"\ntransport = \"sse2\"\nheaders = { \"x-a\" = \"1\", \"bad name\" = \"2\", \"X-A\" = \"3\" }\n",
    );
    let all = errors.join("\n");
    for (position, text) in [
        ("latchkey.toml:1:10:", "listen = \"127.0.0.1:8931\""),
        ("latchkey.toml:2:25:", "whole number of seconds"),
        ("latchkey.toml:5:13:", "unknown variant `sse2`"),
        ("latchkey.toml:6:26:", "not a valid HTTP header name"),
        ("latchkey.toml:6:44:", "given twice"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(position) && e.contains(text)),
            "missing {position} {text:?} in:\n{all}"
        );
    }
}

/// `dpop` in `[servers.NAME.oauth]`: left out it follows the metadata (`None`);
/// anything but a bool is refused, at its position, naming both values.
#[test]
fn dpop_is_a_bool_or_left_out() {
    let config = parse(
        "[servers.a]\nurl = \"https://a.example.com\"\noauth = { dpop = true }\n[servers.b]\nurl = \"https://b.example.com\"\noauth = { dpop = false }\n[servers.c]\nurl = \"https://c.example.com\"\n",
    )
    .expect("valid");
    let dpop: Vec<Option<bool>> = config
        .servers
        .iter()
        .map(|s| match &s.oauth {
            OAuth::Enabled(oauth) => oauth.dpop,
            OAuth::Disabled => panic!("oauth is on"),
        })
        .collect();
    assert_eq!(dpop, [Some(true), Some(false), None]);
    let errors = diagnostics(
        "[servers.a]\nurl = \"https://a.example.com\"\n[servers.a.oauth]\ndpop = \"ES256\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("latchkey.toml:4:")
            && errors[0].contains("dpop = true")
            && errors[0].contains("dpop = false"),
        "{errors:?}"
    );
}
