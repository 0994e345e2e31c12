//! `latchkey status` and `latchkey doctor`: what is stored and what is wrong, for a
//! person at a terminal. Neither prints a secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::callback::TerminalBrowser;
use crate::config::{Config, OAuth, StoreKind};
use crate::credentials::{self, StoreUnavailable};
use crate::server::{ServerError, Shared, open, probe, session_for};
use latchkey_auth::store::StoreError;

/// One row per server: name, state, store, expiry, scopes.
pub async fn status(config: &Config) -> Result<Value, ServerError> {
    let browser = Arc::new(TerminalBrowser { open: false });
    // The store is opened once for all servers, and only if one of them uses OAuth.
    let uses_oauth = config
        .servers
        .iter()
        .any(|s| matches!(s.oauth, OAuth::Enabled(_)));
    let shared = if uses_oauth {
        Some(open(config).await.map_err(|e| e.to_string()))
    } else {
        None
    };
    let mut rows = Vec::new();
    for server in &config.servers {
        let row = match (&server.oauth, &shared) {
            (OAuth::Enabled(_), Some(shared)) => {
                oauth_row(config, &server.name, browser.clone(), shared).await
            }
            _ => json!({
                "server": server.name, "state": "oauth_off", "store": null,
                "expires_in_secs": null, "scopes": [],
            }),
        };
        rows.push(row);
    }
    Ok(json!({ "servers": rows }))
}

async fn oauth_row(
    config: &Config,
    name: &str,
    browser: Arc<TerminalBrowser>,
    shared: &Result<Shared, String>,
) -> Value {
    let session = match shared {
        Ok(shared) => session_for(config, name, browser, shared)
            .await
            .map(|session| (session, shared.store.as_str()))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    match session {
        Ok((session, store)) => {
            let token = session.token_info();
            let now = SystemTime::now();
            let state = match &token {
                None => "needs_auth",
                Some((Some(at), _)) if *at <= now => "expired",
                Some(_) => "ready",
            };
            let (expires_at, scopes) = token.unwrap_or_default();
            let renewable = session.renewable();
            json!({
                "server": name,
                "state": state,
                "store": store,
                "expires_in_secs": expires_at.map(|at| at.duration_since(now).map_or(0, |d| d.as_secs())),
                "scopes": scopes,
                "refresh_token": renewable,
                "warning": (renewable == Some(false)).then_some(crate::server::NO_REFRESH_TOKEN),
            })
        }
        Err(e) => json!({
            "server": name, "state": "error", "store": null,
            "expires_in_secs": null, "scopes": [], "error": e,
        }),
    }
}

/// The status as an aligned table.
pub fn table(status: &Value) -> String {
    let rows: Vec<[String; 5]> = status["servers"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let text = |key: &str| r[key].as_str().unwrap_or("-").to_owned();
                    let expires = r["expires_in_secs"]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |s| format!("in {s} s"));
                    let scopes = r["scopes"]
                        .as_array()
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            s.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_else(|| "-".to_owned());
                    let mut state = text("state");
                    if let Some(error) = r["error"].as_str() {
                        state = format!("{state}: {error}");
                    }
                    if let Some(warning) = r["warning"].as_str() {
                        state = format!("{state} ({warning})");
                    }
                    // Error text and scopes come from servers: no escape sequences
                    // reach the terminal.
                    [text("server"), state, text("store"), expires, scopes]
                        .map(|cell| crate::redact::escape_controls(&cell))
                })
                .collect()
        })
        .unwrap_or_default();
    let header = ["SERVER", "STATE", "STORE", "EXPIRES", "SCOPES"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One finding: what was checked, whether it is fine, and the fix when it is not.
#[derive(Debug)]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// `latchkey check`: the config at `path`'s warnings and a one-line verdict (its
/// problems are the error, every one with its position).
pub fn check(path: &std::path::Path) -> Result<String, crate::config::ConfigError> {
    let config = crate::config::load(path)?;
    let mut text = String::new();
    for warning in config.warnings() {
        text.push_str(&format!("warning: {warning}\n"));
    }
    let count = config.servers.len();
    text.push_str(&format!(
        "{}: ok, {count} server{}\n",
        path.display(),
        if count == 1 { "" } else { "s" }
    ));
    Ok(text)
}

/// `latchkey doctor`'s findings as it prints them, each fix under its problem.
pub fn findings(findings: &[Finding]) -> String {
    let mut text = String::new();
    for finding in findings {
        let mark = if finding.ok { "ok " } else { "ERR" };
        // Details quote servers' answers: escaped for the terminal.
        text.push_str(&format!(
            "[{mark}] {}: {}\n",
            finding.check,
            crate::redact::escape_controls(&finding.detail)
        ));
        if let Some(fix) = &finding.fix {
            text.push_str(&format!("      fix: {fix}\n"));
        }
    }
    text
}

/// Checks everything a login or a request depends on. The config was already
/// loaded (a bad config fails before this, with every problem listed).
pub async fn doctor(config: &Config, config_path: &str) -> Vec<Finding> {
    let mut findings = vec![Finding {
        check: "config".into(),
        ok: true,
        detail: format!("{config_path}: {} servers", config.servers.len()),
        fix: None,
    }];
    let probe_keyring = tokio::task::spawn_blocking(latchkey_auth::store::KeyringStore::probe)
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let keyring_backend = if cfg!(target_os = "macos") {
        "macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else {
        "Secret Service (D-Bus)"
    };
    findings.push(match (&probe_keyring, config.store) {
        (Ok(()), _) => Finding {
            check: "keyring".into(),
            ok: true,
            detail: format!("{keyring_backend}: reachable and unlocked"),
            fix: None,
        },
        (Err(cause), StoreKind::File | StoreKind::Memory) => Finding {
            check: "keyring".into(),
            ok: true,
            detail: format!("{keyring_backend}: not usable ({cause}); not needed with store = {:?}", store_name(config.store)),
            fix: None,
        },
        (Err(cause), _) => Finding {
            check: "keyring".into(),
            ok: false,
            detail: format!("{keyring_backend}: not usable ({cause})"),
            fix: Some(if cfg!(target_os = "linux") {
                "start and unlock a Secret Service (gnome-keyring-daemon or KeePassXC) in your D-Bus session, or set store = \"file\" in the config".into()
            } else {
                "unlock the keyring, or set store = \"file\" in the config".into()
            }),
        },
    });
    let check = crate::peer::mechanism();
    let unkeyed: Vec<&str> = config
        .servers
        .iter()
        .filter(|s| !s.local_key)
        .map(|s| s.name.as_str())
        .collect();
    let exposed = check == "unavailable" && !unkeyed.is_empty();
    findings.push(Finding {
        check: "local users".into(),
        ok: !exposed,
        detail: if check == "unavailable" {
            if exposed {
                format!(
                    "cannot tell which user a local connection comes from here: every local user can use {}",
                    unkeyed.join(", ")
                )
            } else {
                "cannot tell which user a local connection comes from here; every server is served only at its key URL (local_key)".into()
            }
        } else {
            format!(
                "only this user's processes{} may use the endpoint (checked with {check})",
                if config.allowed_uids.is_empty() {
                    String::new()
                } else {
                    format!(" and uids {:?}", config.allowed_uids)
                }
            )
        },
        fix: exposed.then(|| {
            "set local_key = true on those servers and give clients `latchkey url NAME`, or run latchkey where /proc/net/tcp is readable (not in a sandbox that hides it)".into()
        }),
    });
    match credentials::open(config.store, config.state_dir.as_deref()).await {
        Ok(opened) => {
            findings.push(Finding {
                check: "store".into(),
                ok: true,
                detail: format!(
                    "{} ({}){}",
                    opened.credentials.store.kind(),
                    opened.credentials.store.location(),
                    opened
                        .fallback
                        .map(|_| ", because the keyring is not usable")
                        .unwrap_or_default()
                ),
                fix: None,
            });
            // Every latchkey process of the user must print the same here, or they
            // do not share tokens and single-flight refreshes.
            let state = config
                .state_dir
                .clone()
                .map_or_else(credentials::state_dir, Ok)
                .map_or_else(|e| format!("none ({e})"), |d| d.display().to_string());
            findings.push(Finding {
                check: "paths".into(),
                ok: true,
                detail: format!(
                    "state {state}, locks {}, session bus {}",
                    opened
                        .credentials
                        .lock_dir
                        .as_ref()
                        .map_or_else(|| "none (memory store)".into(), |d| d.display().to_string()),
                    credentials::session_bus().unwrap_or_else(|| "none".into()),
                ),
                fix: None,
            });
        }
        Err(e @ StoreUnavailable::Keyring { .. }) => findings.push(Finding {
            check: "store".into(),
            ok: false,
            detail: e.to_string(),
            fix: Some("set store = \"file\" in the config, or fix the keyring".into()),
        }),
        // A directory latchkey refuses: another user could use it.
        Err(StoreUnavailable::Directory(StoreError::Unsafe { path, problem, fix })) => {
            findings.push(Finding {
                check: "paths".into(),
                ok: false,
                detail: format!("{path}: {problem}"),
                fix: Some(fix),
            });
        }
        Err(e) => findings.push(Finding {
            check: "paths".into(),
            ok: false,
            detail: e.to_string(),
            fix: Some(
                "set XDG_STATE_HOME (or HOME), or state_dir in the config, to a directory of your own".into(),
            ),
        }),
    }
    let http = crate::server::http_client().ok();
    for server in &config.servers {
        if let OAuth::Enabled(oauth) = &server.oauth
            && oauth.redirect_port != 0
        {
            let free = tokio::net::TcpListener::bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                oauth.redirect_port,
            )))
            .await;
            findings.push(Finding {
                check: format!("{}: callback port", server.name),
                ok: free.is_ok(),
                detail: match &free {
                    Ok(_) => format!("127.0.0.1:{} is free", oauth.redirect_port),
                    Err(e) => format!("127.0.0.1:{} is taken: {e}", oauth.redirect_port),
                },
                fix: free.is_err().then(|| format!(
                    "stop what listens on port {} (`ss -ltnp 'sport = :{}'` shows it), or change redirect_port under [servers.{}.oauth] and the client's registered redirect URI",
                    oauth.redirect_port, oauth.redirect_port, server.name
                )),
            });
        }
        let Some(http) = &http else { continue };
        let reached = tokio::time::timeout(Duration::from_secs(10), probe(http, server)).await;
        let url = crate::redact::redacted(&server.url);
        let check = format!("{}: upstream", server.name);
        let fix = |what: &str| {
            Some(format!(
                "{what} under [servers.{}] and the network (proxy, VPN, DNS)",
                server.name
            ))
        };
        findings.push(match reached {
            Ok(Ok(p)) if p.status.is_success() => Finding {
                check,
                ok: true,
                detail: format!("{url} answers without authorization"),
                fix: None,
            },
            Ok(Ok(p)) if matches!(p.status.as_u16(), 401 | 403) => Finding {
                check,
                ok: true,
                detail: format!(
                    "{url} is reachable and asks for authorization{}",
                    if p.challenge.is_some() {
                        ""
                    } else {
                        " (without a Bearer challenge)"
                    }
                ),
                fix: None,
            },
            Ok(Ok(p)) => Finding {
                check,
                ok: false,
                detail: format!("{url} answered an MCP initialize with HTTP {}", p.status),
                fix: fix(
                    "check that url is the MCP endpoint (often ending in /mcp), and transport,",
                ),
            },
            Ok(Err(e)) => Finding {
                check,
                ok: false,
                detail: e.to_string(),
                fix: fix("check url"),
            },
            Err(_) => Finding {
                check,
                ok: false,
                detail: format!("{url} did not answer within 10 s"),
                fix: fix("check url"),
            },
        });
    }
    findings
}

fn store_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Auto => "auto",
        StoreKind::Keyring => "keyring",
        StoreKind::File => "file",
        StoreKind::Memory => "memory",
    }
}
