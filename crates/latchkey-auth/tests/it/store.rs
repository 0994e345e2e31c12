//! The credential stores against the real thing: the Secret Service
//! (gnome-keyring, started by scripts/test inside `dbus-run-session`), checked with
//! `secret-tool`; and the file store's permissions, corruption handling and
//! atomicity under `kill -9`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latchkey_auth::Secret;
use latchkey_auth::registration::Registration;
use latchkey_auth::store::{FileStore, KeyringStore, Record, Store, StoreError};
use latchkey_auth::token::{ClientAuth, TokenSet};

fn record(tag: &str, scopes: usize) -> Record {
    Record {
        issuer: Some("https://auth.example.com".into()),
        token_endpoint: Some("https://auth.example.com/token".into()),
        revocation_endpoint: Some("https://auth.example.com/revoke".into()),
        configured_client_issuer: None,
        resource_metadata_url: None,
        tokens: Some(TokenSet {
            access_token: Secret::new(format!("at-{tag}")),
            refresh_token: Some(Secret::new(format!("rt-{tag}"))),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            scopes: (0..scopes).map(|i| format!("scope:{i:04}")).collect(),
            dpop: None,
        }),
        registration: Some(Registration {
            issuer: "https://auth.example.com".into(),
            client_id: format!("client-{tag}"),
            auth: ClientAuth::Basic(Secret::new(format!("cs-{tag}"))),
            redirect_uri: "http://127.0.0.1:33418/callback".into(),
            registration_access_token: None,
        }),
        local_key: Some(Secret::new(format!("lk-{tag}"))),
        dpop_keys: None,
        server: None,
    }
}

/// A resource URL no other test (or run) uses.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "https://{name}.example.com/mcp/{}-{nanos}",
        std::process::id()
    )
}

fn secret_tool(args: &[&str]) -> Option<String> {
    let output = Command::new("secret-tool")
        .args(args)
        .output()
        .expect("secret-tool is installed (scripts/test installs libsecret-tools)");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn require_secret_service() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "no D-Bus session: run the tests through scripts/test, which starts one with gnome-keyring"
    );
    KeyringStore::probe().expect("the Secret Service is reachable and unlocked");
}

#[test]
fn keyring_records_are_real_secret_service_items_split_when_large() {
    require_secret_service();
    let store = KeyringStore::new();
    assert_eq!(store.kind(), "keyring");
    for (name, scopes) in [("small", 2), ("large", 300)] {
        let resource = unique(name);
        let saved = record(name, scopes);
        store.save(&resource, &saved).expect("save");
        assert_eq!(
            store.load(&resource, name).expect("load"),
            Some(saved.clone())
        );
        // What another program sees in the keyring.
        let item = secret_tool(&["lookup", "service", "latchkey", "username", &resource])
            .expect("the item is in the keyring");
        if scopes > 100 {
            let count: usize = item
                .trim()
                .strip_prefix("#chunks ")
                .and_then(|n| n.parse().ok())
                .expect("a large record is split");
            assert!(count >= 2, "{item}");
            let part = secret_tool(&[
                "lookup",
                "service",
                "latchkey",
                "username",
                &format!("{resource}#1"),
            ])
            .expect("its first part");
            // Credential Manager's limit: 2,560 bytes of UTF-16, 1,280 characters.
            assert!(part.chars().count() <= 1280, "{}", part.len());
        } else {
            assert!(
                item.contains("\"version\": 1") && item.contains("at-small"),
                "{item}"
            );
        }
        store.delete(&resource).expect("delete");
        assert_eq!(store.load(&resource, name).expect("load"), None);
        assert_eq!(
            secret_tool(&["lookup", "service", "latchkey", "username", &resource]),
            None
        );
        assert_eq!(
            secret_tool(&[
                "lookup",
                "service",
                "latchkey",
                "username",
                &format!("{resource}#1")
            ]),
            None,
            "no part is left behind"
        );
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latchkey-store-{name}-{}", std::process::id()));
    drop(std::fs::remove_dir_all(&dir));
    dir
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn file_records_are_private_and_a_corrupt_one_is_reported_and_kept() {
    let dir = scratch("file");
    let store = FileStore::new(dir.join("credentials"));
    let resource = unique("file");
    store.save(&resource, &record("f", 2)).expect("save");
    let path = store.path(&resource);
    #[cfg(unix)]
    {
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("credentials")), 0o700);
    }
    std::fs::write(&path, b"{\"version\":1,\"resource\":").expect("corrupt it");
    let e = store.load(&resource, "notes").expect_err("corrupt");
    let message = e.to_string();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{message}");
    assert!(
        message.contains(&path.display().to_string()) && message.contains("latchkey logout notes"),
        "names the file and the fix: {message}"
    );
    assert!(path.exists(), "never dropped silently");
    drop(std::fs::remove_dir_all(&dir));
}

/// The `store_writer` example, which `cargo test` builds next to this binary.
fn writer() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/it-…");
    let writer = debug.join("examples/store_writer");
    if !writer.exists() {
        // A filtered run (`cargo test --test it`) does not build examples.
        let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--locked",
                "-p",
                "latchkey-auth",
                "--example",
                "store_writer",
            ])
            .status()
            .expect("run cargo");
        assert!(built.success() && writer.exists(), "{}", writer.display());
    }
    writer
}

#[test]
fn a_writer_killed_mid_write_leaves_a_whole_record() {
    let dir = scratch("crash");
    let store = FileStore::new(dir.join("credentials"));
    let resource = unique("crash");
    store.save(&resource, &record("first", 1)).expect("save");
    for round in 0..5 {
        let mut child = Command::new(writer())
            .arg(dir.join("credentials"))
            .arg(&resource)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer");
        std::thread::sleep(Duration::from_millis(150 + 40 * round));
        // SIGKILL: no destructor, no cleanup.
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the writer was still writing when killed"
        );
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let loaded = store
            .load(&resource, "crash")
            .expect("the record is whole after a kill")
            .expect("and present");
        let tokens = loaded.tokens.expect("tokens");
        assert!(tokens.access_token.expose().starts_with("at-"));
        assert!(!tokens.scopes.is_empty());
    }
    drop(std::fs::remove_dir_all(&dir));
}

/// Tokens as a grant makes them (`expires_in` from now) come back from every store
/// equal to what was saved: a process comparing the record it reads with the tokens
/// it holds must not see a change where there is none (it would take its own refused
/// token for a fresh one from another process).
#[test]
fn a_record_round_trips_through_each_store_equal_to_its_tokens() {
    require_secret_service();
    let dir = scratch("round-trip");
    let stores: [Arc<dyn Store>; 3] = [
        latchkey_auth::store::MemoryStore::new(),
        FileStore::new(dir.join("credentials")),
        KeyringStore::new(),
    ];
    for store in stores {
        let resource = unique("round-trip");
        let tokens = TokenSet::issued(
            Secret::new("at-issued"),
            Some(Secret::new("rt-issued")),
            Some(3600),
            vec!["mcp".into()],
        );
        let saved = Record {
            tokens: Some(tokens.clone()),
            ..record("round-trip", 1)
        };
        store.save(&resource, &saved).expect("save");
        let loaded = store.load(&resource, "round-trip").expect("load");
        store.delete(&resource).expect("delete");
        assert_eq!(
            loaded.as_ref().and_then(|r| r.tokens.as_ref()),
            Some(&tokens),
            "{} store",
            store.kind()
        );
        assert_eq!(loaded, Some(saved), "{} store", store.kind());
    }
}
