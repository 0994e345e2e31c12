//! Where credentials live between runs: one record per MCP server, keyed by the
//! server's canonical resource URL, holding its tokens and its client registration.
//!
//! Backends: the OS keyring (Secret Service, Keychain, Credential Manager), a file
//! per record under the state directory, or memory. Every backend is synchronous; the
//! caller runs it on a blocking thread. A record that cannot be read is an error that
//! names where it is; it is never dropped or overwritten silently.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Secret;
use crate::registration::Registration;
use crate::token::{ClientAuth, TokenSet};

/// The keyring service name every record is stored under.
pub const KEYRING_SERVICE: &str = "latchkey";
/// Credential Manager caps a secret at 2,560 bytes, which the `keyring` crate fills
/// with UTF-16: 1,280 characters. Bigger records are split into numbered entries.
const KEYRING_CHUNK: usize = 1200;
const RECORD_VERSION: u32 = 1;

/// One server's credentials. `Debug` shows no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The authorization server the tokens and registration belong to.
    pub issuer: Option<String>,
    /// That issuer's token and revocation endpoints, as its metadata named them when
    /// the tokens were issued: a refresh or a revocation of these tokens goes there
    /// and nowhere else (MCP 2026-07-28, authorization server binding).
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    /// The issuer a client secret or key from the config was first used with: without
    /// an `issuer` pin in the config, it is never sent to another one.
    pub configured_client_issuer: Option<String>,
    /// Where the server's protected resource metadata was found (RFC 9728): where
    /// discovery starts after a restart, when no 401 has named it yet.
    pub resource_metadata_url: Option<String>,
    pub tokens: Option<TokenSet>,
    /// A registration latchkey made (dynamic or a metadata document). A client from
    /// the config is not stored: the config stays its source.
    pub registration: Option<Registration>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the credential record at {location} is unreadable ({cause}); it was left in place. Remove it with `latchkey logout {server}` or fix the file"
    )]
    Corrupt {
        location: String,
        server: String,
        cause: String,
    },
    #[error("cannot use the {store} credential store at {location}: {cause}")]
    Io {
        store: &'static str,
        location: String,
        cause: String,
    },
}

/// A credential store. Calls block; run them on a blocking thread.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// `keyring`, `file` or `memory`, for `status` and `doctor`.
    fn kind(&self) -> &'static str;
    /// Where records live, for messages.
    fn location(&self) -> String;
    /// `server` is the config's name, used only in messages.
    fn load(&self, resource: &str, server: &str) -> Result<Option<Record>, StoreError>;
    fn save(&self, resource: &str, record: &Record) -> Result<(), StoreError>;
    fn delete(&self, resource: &str) -> Result<(), StoreError>;
}

/// Keeps records for the life of the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<String, Record>>,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "memory".into()
    }

    fn load(&self, resource: &str, _server: &str) -> Result<Option<Record>, StoreError> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(records.get(resource).cloned())
    }

    fn save(&self, resource: &str, record: &Record) -> Result<(), StoreError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.insert(resource.to_owned(), record.clone());
        Ok(())
    }

    fn delete(&self, resource: &str) -> Result<(), StoreError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.remove(resource);
        Ok(())
    }
}

/// One JSON file per record in a 0700 directory, each 0600 and replaced atomically
/// (temporary file, fsync, rename, fsync of the directory), so a crash leaves the old
/// record or the new one.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self { dir: dir.into() })
    }

    /// The record's file: a hash of the resource URL, which may hold any character.
    pub fn path(&self, resource: &str) -> PathBuf {
        let digest = Sha256::digest(resource.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    fn io(&self, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io {
            store: "file",
            location: path.display().to_string(),
            cause: e.to_string(),
        }
    }

    fn create_dir(&self) -> Result<(), StoreError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&self.dir).map_err(|e| self.io(&self.dir, e))
    }
}

impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn load(&self, resource: &str, server: &str) -> Result<Option<Record>, StoreError> {
        let path = self.path(resource);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path, e)),
        };
        decode(&text, resource)
            .map(Some)
            .map_err(|cause| StoreError::Corrupt {
                location: path.display().to_string(),
                server: server.to_owned(),
                cause,
            })
    }

    fn save(&self, resource: &str, record: &Record) -> Result<(), StoreError> {
        self.create_dir()?;
        let path = self.path(resource);
        let temp = self
            .dir
            .join(format!(".{}.{}.tmp", std::process::id(), random_suffix()));
        let write = || -> std::io::Result<()> {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            file.write_all(&encode(resource, record))?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            // The rename itself must reach the disk before the write counts as done.
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            drop(fs::remove_file(&temp));
            self.io(&path, e)
        })
    }

    fn delete(&self, resource: &str) -> Result<(), StoreError> {
        let path = self.path(resource);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path, e)),
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    // Uniqueness only: the pid already separates processes.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OS keyring through the `keyring` crate: one entry per record (service
/// `latchkey`, account = the resource URL), split into `#1`, `#2`… entries when the
/// record is longer than Windows allows.
#[derive(Debug, Default)]
pub struct KeyringStore;

impl KeyringStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }

    fn entry(account: &str) -> Result<keyring::Entry, StoreError> {
        keyring::Entry::new(KEYRING_SERVICE, account).map_err(|e| keyring_error(account, &e))
    }

    /// Whether the keyring answers and is unlocked: a lookup of an entry that does
    /// not exist must come back as "no entry", not as an error.
    pub fn probe() -> Result<(), String> {
        match Self::entry("latchkey-probe").and_then(|entry| {
            entry
                .get_password()
                .map_err(|e| keyring_error("latchkey-probe", &e))
        }) {
            Ok(_) => Ok(()),
            Err(StoreError::Io { cause, .. }) if cause == NO_ENTRY => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn read(account: &str) -> Result<Option<String>, StoreError> {
        match Self::entry(account)?.get_password() {
            Ok(text) => Ok(Some(text)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(keyring_error(account, &e)),
        }
    }
}

const NO_ENTRY: &str = "no entry";

fn keyring_error(account: &str, e: &keyring::Error) -> StoreError {
    StoreError::Io {
        store: "keyring",
        location: format!("{KEYRING_SERVICE}/{account}"),
        cause: match e {
            keyring::Error::NoEntry => NO_ENTRY.into(),
            keyring::Error::NoStorageAccess(_) | keyring::Error::PlatformFailure(_) => format!(
                "{e}; is the keyring running and unlocked? (on Linux: a Secret Service such as gnome-keyring in the D-Bus session), or set store = \"file\""
            ),
            other => other.to_string(),
        },
    }
}

impl Store for KeyringStore {
    fn kind(&self) -> &'static str {
        "keyring"
    }

    fn location(&self) -> String {
        format!("OS keyring, service {KEYRING_SERVICE:?}")
    }

    fn load(&self, resource: &str, server: &str) -> Result<Option<Record>, StoreError> {
        let Some(first) = Self::read(resource)? else {
            return Ok(None);
        };
        // A split record: "#chunks N" followed by N entries.
        let text = match first.strip_prefix("#chunks ") {
            Some(count) => {
                let count: usize = count.parse().unwrap_or(0);
                let mut text = String::new();
                for i in 1..=count {
                    let part = Self::read(&format!("{resource}#{i}"))?.unwrap_or_default();
                    text.push_str(&part);
                }
                text
            }
            None => first,
        };
        decode(text.as_bytes(), resource)
            .map(Some)
            .map_err(|cause| StoreError::Corrupt {
                location: format!("keyring {KEYRING_SERVICE}/{resource}"),
                server: server.to_owned(),
                cause,
            })
    }

    fn save(&self, resource: &str, record: &Record) -> Result<(), StoreError> {
        let text = String::from_utf8(encode(resource, record)).unwrap_or_default();
        let write = |account: &str, value: &str| {
            Self::entry(account)?
                .set_password(value)
                .map_err(|e| keyring_error(account, &e))
        };
        if text.len() <= KEYRING_CHUNK {
            return write(resource, &text);
        }
        // JSON is ASCII-safe at any byte boundary only for ASCII; split on chars.
        let chars: Vec<char> = text.chars().collect();
        let parts: Vec<String> = chars
            .chunks(KEYRING_CHUNK)
            .map(|c| c.iter().collect())
            .collect();
        // Parts first, the index last: a reader never sees an index without its parts.
        for (i, part) in parts.iter().enumerate() {
            write(&format!("{resource}#{}", i + 1), part)?;
        }
        write(resource, &format!("#chunks {}", parts.len()))
    }

    fn delete(&self, resource: &str) -> Result<(), StoreError> {
        let first = Self::read(resource)?;
        let chunks = first
            .as_deref()
            .and_then(|t| t.strip_prefix("#chunks "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let accounts = std::iter::once(resource.to_owned())
            .chain((1..=chunks).map(|i| format!("{resource}#{i}")));
        for account in accounts {
            match Self::entry(&account)?.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => {}
                Err(e) => return Err(keyring_error(&account, &e)),
            }
        }
        Ok(())
    }
}

/// The stored form. Every field but `version` and `resource` is optional, so a
/// record from an older latchkey (fewer fields) still loads, and unknown fields from a
/// newer one are ignored.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    resource: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    configured_client_issuer: Option<String>,
    #[serde(default)]
    resource_metadata_url: Option<String>,
    #[serde(default)]
    tokens: Option<StoredTokens>,
    #[serde(default)]
    client: Option<StoredClient>,
}

#[derive(Serialize, Deserialize)]
struct StoredTokens {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// Seconds since the Unix epoch, for older latchkey versions reading the record.
    #[serde(default)]
    expires_at: Option<u64>,
    /// Milliseconds since the Unix epoch: what a token response gave, kept exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredClient {
    issuer: String,
    client_id: String,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    auth_method: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    registration_access_token: Option<String>,
}

fn encode(resource: &str, record: &Record) -> Vec<u8> {
    let tokens = record.tokens.as_ref().map(|t| StoredTokens {
        access_token: t.access_token.expose().to_owned(),
        refresh_token: t.refresh_token.as_ref().map(|r| r.expose().to_owned()),
        expires_at: t
            .expires_at
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        expires_at_ms: t
            .expires_at
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok()),
        scopes: t.scopes.clone(),
    });
    let client = record.registration.as_ref().and_then(|r| {
        let (auth_method, client_secret) = match &r.auth {
            ClientAuth::None => ("none", None),
            ClientAuth::Basic(s) => ("client_secret_basic", Some(s.expose().to_owned())),
            ClientAuth::Post(s) => ("client_secret_post", Some(s.expose().to_owned())),
            // A private key comes from the config, never from the store.
            ClientAuth::PrivateKeyJwt(_) => return None,
        };
        Some(StoredClient {
            issuer: r.issuer.clone(),
            client_id: r.client_id.clone(),
            auth_method: auth_method.into(),
            client_secret,
            redirect_uri: r.redirect_uri.clone(),
            registration_access_token: r
                .registration_access_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
        })
    });
    let stored = Stored {
        version: RECORD_VERSION,
        resource: resource.to_owned(),
        issuer: record.issuer.clone(),
        token_endpoint: record.token_endpoint.clone(),
        revocation_endpoint: record.revocation_endpoint.clone(),
        configured_client_issuer: record.configured_client_issuer.clone(),
        resource_metadata_url: record.resource_metadata_url.clone(),
        tokens,
        client,
    };
    serde_json::to_vec_pretty(&stored).unwrap_or_default()
}

/// Parses a record. Errors describe the structure only, never the content.
fn decode(bytes: &[u8], resource: &str) -> Result<Record, String> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a latchkey credential record: {:?} at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if stored.version > RECORD_VERSION {
        return Err(format!(
            "written by a newer latchkey (record version {}); upgrade latchkey",
            stored.version
        ));
    }
    if stored.resource != resource {
        return Err(format!(
            "it belongs to {:?}, not {resource:?}",
            stored.resource
        ));
    }
    let tokens = stored.tokens.map(|t| TokenSet {
        access_token: Secret::new(t.access_token),
        refresh_token: t.refresh_token.map(Secret::new),
        expires_at: match (t.expires_at_ms, t.expires_at) {
            (Some(ms), _) => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
            (None, secs) => secs.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
        },
        scopes: t.scopes,
    });
    let registration = match stored.client {
        None => None,
        Some(c) => Some(Registration {
            auth: match (c.auth_method.as_str(), c.client_secret) {
                ("none", _) => ClientAuth::None,
                ("client_secret_basic", Some(s)) => ClientAuth::Basic(Secret::new(s)),
                ("client_secret_post", Some(s)) => ClientAuth::Post(Secret::new(s)),
                (method, _) => {
                    return Err(format!("unknown client auth_method {method:?}"));
                }
            },
            issuer: c.issuer,
            client_id: c.client_id,
            redirect_uri: c.redirect_uri,
            registration_access_token: c.registration_access_token.map(Secret::new),
        }),
    };
    Ok(Record {
        issuer: stored.issuer,
        token_endpoint: stored.token_endpoint,
        revocation_endpoint: stored.revocation_endpoint,
        configured_client_issuer: stored.configured_client_issuer,
        resource_metadata_url: stored.resource_metadata_url,
        tokens,
        registration,
    })
}

/// The machine-wide lock for one server's refresh and login: an exclusive lock on
/// `<dir>/<hash>.lock`, released when dropped (or when the process dies, since the
/// kernel drops the lock with the file descriptor).
#[derive(Debug)]
pub struct FlowLock {
    _file: fs::File,
}

impl FlowLock {
    /// Blocks until the lock is free.
    pub fn acquire(dir: &Path, resource: &str) -> Result<Self, String> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        let describe = |e: std::io::Error| format!("cannot lock {}: {e}", dir.display());
        builder.create(dir).map_err(describe)?;
        let store = FileStore {
            dir: dir.to_owned(),
        };
        let path = store.path(resource).with_extension("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(describe)?;
        file.lock().map_err(describe)?;
        Ok(Self { _file: file })
    }
}

/// A per-server marker beside the lock file, rewritten (with a fresh random value)
/// whenever a process saves or deletes that server's record. Other processes read it
/// every second: a changed value sends them back to the store, so a logout or another
/// process's refresh is seen without a request failing first, and without polling
/// the keyring itself.
#[derive(Debug, Clone)]
pub struct Revision {
    path: PathBuf,
}

impl Revision {
    pub fn new(dir: &Path, resource: &str) -> Self {
        let store = FileStore {
            dir: dir.to_owned(),
        };
        Self {
            path: store.path(resource).with_extension("rev"),
        }
    }

    /// The current value; `None` when no process has written one yet.
    pub fn read(&self) -> Option<String> {
        fs::read_to_string(&self.path).ok()
    }

    /// Writes a fresh value and returns it. Replaced atomically (a temporary file,
    /// then a rename, which replaces a planted link rather than following it).
    pub fn bump(&self) -> std::io::Result<String> {
        let value = random_suffix();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(".{}.{}.rev", std::process::id(), random_suffix()));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options
            .open(&temp)
            .and_then(|mut file| file.write_all(value.as_bytes()))
            .and_then(|()| fs::rename(&temp, &self.path));
        if written.is_err() {
            drop(fs::remove_file(&temp));
        }
        written.map(|()| value)
    }
}

/// Whether a record's access token is still good at `now`.
pub fn is_live(tokens: &TokenSet, now: SystemTime) -> bool {
    tokens.expires_at.is_none_or(|at| at > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            issuer: Some("https://auth.example.com".into()),
            token_endpoint: Some("https://auth.example.com/token".into()),
            revocation_endpoint: None,
            configured_client_issuer: None,
            resource_metadata_url: Some(
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp".into(),
            ),
            tokens: Some(TokenSet {
                access_token: Secret::new("at-1"),
                refresh_token: Some(Secret::new("rt-1")),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
                scopes: vec!["mcp".into()],
            }),
            registration: Some(Registration {
                issuer: "https://auth.example.com".into(),
                client_id: "c-1".into(),
                auth: ClientAuth::Post(Secret::new("cs-1")),
                redirect_uri: "http://127.0.0.1:33418/callback".into(),
                registration_access_token: None,
            }),
        }
    }

    #[test]
    fn round_trip_and_a_version_one_record_with_fewer_fields() {
        let resource = "https://mcp.example.com/mcp";
        let record = sample();
        assert_eq!(decode(&encode(resource, &record), resource), Ok(record));
        let old = br#"{"version":1,"resource":"https://mcp.example.com/mcp","tokens":{"access_token":"at-0"}}"#;
        let loaded = decode(old, resource).expect("an old record loads");
        assert_eq!(
            loaded.tokens.map(|t| t.access_token),
            Some(Secret::new("at-0"))
        );
        let e = decode(old, "https://other.example.com/mcp").expect_err("wrong resource");
        assert!(e.contains("belongs to"), "{e}");
        let e = decode(b"{\"access_token\":\"at-secret\"", resource).expect_err("corrupt");
        assert!(!e.contains("at-secret"), "{e}");
    }
}
