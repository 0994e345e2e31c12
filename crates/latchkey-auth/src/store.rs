//! Where credentials live between runs: one record per MCP server, keyed by the
//! server's canonical resource URL, holding its tokens and its client registration.
//!
//! Backends: the OS keyring (Secret Service, Keychain, Credential Manager), a file
//! per record under the state directory, or memory. Every backend is synchronous; the
//! caller runs it on a blocking thread. A record that cannot be read is an error that
//! names where it is; it is never dropped or overwritten silently.
//!
//! On disk, latchkey trusts only what is the user's own. On a shared machine another
//! user could otherwise plant a record (whose tokens latchkey would then send) or a
//! symbolic link (latchkey's files would go where it points). So the directories of
//! the file store and of the lock files are real directories, owned by the user and
//! not writable by anyone else, as are their parents ([`private_dir`]); every file is
//! opened without following a link and made 0600 ([`open`]); and a record or lock
//! file that belongs to another user is refused.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Read as _, Write as _};
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
    /// The key of a server's capability URL (`local_key = true`), in a record of its
    /// own (see `latchkey::local_key`), so that a logout leaves it alone.
    pub local_key: Option<Secret>,
    /// The installation's DPoP key pairs, in a record of their own (`dpop_key.rs`).
    pub dpop_keys: Option<Secret>,
    /// The server (its canonical resource) the tokens are for, in a record kept
    /// under the server's name: when the config gives the name another URL, the
    /// old tokens are not sent there.
    pub server: Option<String>,
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
    /// A directory or file that another user could read, plant or swap credentials
    /// through; `fix` says what to do.
    #[error("refusing to use {path}: {problem}. {fix}")]
    Unsafe {
        path: String,
        problem: String,
        fix: String,
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
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        store: "file",
        location: path.display().to_string(),
        cause: e.to_string(),
    }
}

fn unsafe_path(path: &Path, problem: impl Into<String>, fix: String) -> StoreError {
    StoreError::Unsafe {
        path: path.display().to_string(),
        problem: problem.into(),
        fix,
    }
}

/// Makes `dir` (0700) where it is missing and checks that latchkey may keep
/// credentials or locks in it: it and its parent (the state directory, or the user's
/// runtime directory) must each be a real directory, not a symbolic link, that
/// belongs to this user and that no one else may write to. The parent is checked
/// before `dir` is made, so that nothing is made through a link planted there.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let make = |path: &Path, recursive: bool| {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(recursive);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(path) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            made => made.map_err(|e| io_error(path, e)),
        }
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        make(parent, true)?;
        check_dir(parent)?;
    }
    make(dir, false)?;
    check_dir(dir)
}

#[cfg(unix)]
fn check_dir(path: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    let shown = path.display();
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(
            path,
            "it is a symbolic link, which could send latchkey's files anywhere",
            format!(
                "Replace it with a directory of your own (`rm {shown} && mkdir -m 700 {shown}`); if you made the link, set state_dir in the config to where it points instead"
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_path(
            path,
            "it is not a directory",
            "Move it away, or set XDG_STATE_HOME (or state_dir in the config) to another directory"
                .into(),
        ));
    }
    ours(
        path,
        &meta,
        "700",
        "remove it, or set XDG_STATE_HOME (or state_dir in the config) to another directory",
    )
}

#[cfg(not(unix))]
fn check_dir(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// This process's user, whom every file and directory latchkey trusts belongs to.
#[cfg(unix)]
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses what belongs to another user, or what its group or others may write to.
/// The fix is `chmod <mode>`, or for another user's, `chown` if it is the user's own
/// after all, else `otherwise`.
#[cfg(unix)]
fn ours(path: &Path, meta: &fs::Metadata, mode: &str, otherwise: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let (owner, me, shown) = (meta.uid(), me(), path.display());
    if owner != me {
        return Err(unsafe_path(
            path,
            format!(
                "it belongs to user {owner}, not to user {me}, whom latchkey runs as; another user's files could hold credentials they planted"
            ),
            format!("If it is yours, `chown {me} {shown}`; if not, {otherwise}"),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            format!(
                "it is writable by its group or by other users (mode {:03o}), so they could plant or swap credentials in it",
                meta.mode() & 0o777
            ),
            format!("Run `chmod {mode} {shown}`"),
        ));
    }
    Ok(())
}

/// How [`open`] opens a file.
#[derive(Debug, Clone, Copy)]
enum Access {
    Read,
    /// A new file, which must not exist yet (`O_EXCL`).
    CreateNew,
    /// For writing, made if missing, its contents kept.
    Lock,
}

/// Opens `path` itself, never what a symbolic link there points to (`O_NOFOLLOW`): a
/// link planted in a shared directory must not make latchkey read or write another
/// file. A file it makes is 0600.
fn open(path: &Path, access: Access) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::CreateNew => options.write(true).create_new(true),
        Access::Lock => options.write(true).create(true).truncate(false),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    options.open(path)
}

/// A record's fix ends with a new login; a lock file's needs nothing more.
const LOG_IN_AGAIN: &str = " and log in again";

/// The refusal of a link planted at `path`, when that is why [`open`] failed
/// (`O_NOFOLLOW`). `then` ends the fix.
fn planted_link(path: &Path, e: &std::io::Error, then: &str) -> Option<StoreError> {
    #[cfg(unix)]
    let link = e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error());
    #[cfg(not(unix))]
    let link = false;
    link.then(|| {
        unsafe_path(
            path,
            "it is a symbolic link, which latchkey never follows",
            format!("Remove it (`rm {}`){then}", path.display()),
        )
    })
}

/// Refuses an opened record or lock file that is not a file of this user's own.
/// `then` ends the fix.
#[cfg(unix)]
fn check_file(path: &Path, file: &fs::File, then: &str) -> Result<(), StoreError> {
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    let shown = path.display();
    if !meta.is_file() {
        return Err(unsafe_path(
            path,
            "it is not a regular file",
            format!("Remove it (`rm -r {shown}`){then}"),
        ));
    }
    ours(
        path,
        &meta,
        "600",
        &format!("remove it (`rm {shown}`){then}"),
    )
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
        let mut file = match open(&path, Access::Read) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(
                    planted_link(&path, &e, LOG_IN_AGAIN).unwrap_or_else(|| io_error(&path, e))
                );
            }
        };
        #[cfg(unix)]
        check_file(&path, &file, LOG_IN_AGAIN)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| io_error(&path, e))?;
        decode(&text, resource)
            .map(Some)
            .map_err(|cause| StoreError::Corrupt {
                location: path.display().to_string(),
                server: server.to_owned(),
                cause,
            })
    }

    fn save(&self, resource: &str, record: &Record) -> Result<(), StoreError> {
        private_dir(&self.dir)?;
        let path = self.path(resource);
        let temp = self
            .dir
            .join(format!(".{}.{}.tmp", std::process::id(), random_suffix()));
        let write = || -> std::io::Result<()> {
            let mut file = open(&temp, Access::CreateNew)?;
            file.write_all(&encode(resource, record))?;
            file.sync_all()?;
            // A rename replaces a link at `path`; it never follows it.
            fs::rename(&temp, &path)?;
            // The rename itself must reach the disk before the write counts as done.
            open(&self.dir, Access::Read)?.sync_all()
        };
        write().map_err(|e| {
            drop(fs::remove_file(&temp));
            io_error(&path, e)
        })
    }

    fn delete(&self, resource: &str) -> Result<(), StoreError> {
        let path = self.path(resource);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_keys: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
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
    /// `DPoP` for a token bound to the installation's DPoP key; absent for Bearer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    /// Which of the installation's DPoP keys: `ES256` or `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_alg: Option<String>,
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
        token_type: t.dpop.map(|_| "DPoP".to_owned()),
        dpop_alg: t.dpop.map(|alg| alg.name().to_owned()),
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
        local_key: record.local_key.as_ref().map(|k| k.expose().to_owned()),
        dpop_keys: record.dpop_keys.as_ref().map(|k| k.expose().to_owned()),
        server: record.server.clone(),
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
    let tokens = stored.tokens.map(|t| -> Result<TokenSet, String> {
        Ok(TokenSet {
            access_token: Secret::new(t.access_token),
            refresh_token: t.refresh_token.map(Secret::new),
            expires_at: match (t.expires_at_ms, t.expires_at) {
                (Some(ms), _) => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
                (None, secs) => secs.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
            },
            scopes: t.scopes,
            dpop: match (t.token_type.as_deref(), t.dpop_alg.as_deref()) {
                (Some(t), Some(alg)) if t.eq_ignore_ascii_case("dpop") => {
                    Some(crate::dpop::Alg::parse(alg).ok_or(format!("unknown dpop_alg {alg:?}"))?)
                }
                _ => None,
            },
        })
    });
    let tokens = tokens.transpose()?;
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
        local_key: stored.local_key.map(Secret::new),
        dpop_keys: stored.dpop_keys.map(Secret::new),
        server: stored.server,
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
        private_dir(dir).map_err(|e| match e {
            StoreError::Io { cause, .. } => format!("cannot lock {}: {cause}", dir.display()),
            refused => refused.to_string(),
        })?;
        let store = FileStore {
            dir: dir.to_owned(),
        };
        let path = store.path(resource).with_extension("lock");
        let file = open(&path, Access::Lock).map_err(|e| {
            planted_link(&path, &e, "").map_or_else(
                || format!("cannot lock {}: {e}", path.display()),
                |refused| refused.to_string(),
            )
        })?;
        #[cfg(unix)]
        check_file(&path, &file, "").map_err(|e| e.to_string())?;
        file.lock()
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
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

    /// The current value; `None` when no process has written one yet (or when the
    /// marker is not this user's).
    pub fn read(&self) -> Option<String> {
        let mut file = open(&self.path, Access::Read).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            if file.metadata().ok()?.uid() != me() {
                return None;
            }
        }
        let mut value = String::new();
        file.read_to_string(&mut value).ok()?;
        Some(value)
    }

    /// Writes a fresh value and returns it. Replaced atomically (a temporary file,
    /// then a rename, which replaces a planted link rather than following it).
    pub fn bump(&self) -> std::io::Result<String> {
        let value = random_suffix();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(".{}.{}.rev", std::process::id(), random_suffix()));
        let written = open(&temp, Access::CreateNew)
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
                dpop: Some(crate::dpop::Alg::EdDsa),
            }),
            registration: Some(Registration {
                issuer: "https://auth.example.com".into(),
                client_id: "c-1".into(),
                auth: ClientAuth::Post(Secret::new("cs-1")),
                redirect_uri: "http://127.0.0.1:33418/callback".into(),
                registration_access_token: None,
            }),
            local_key: Some(Secret::new("lk-1")),
            dpop_keys: Some(Secret::new("dk-1")),
            server: Some("https://mcp.example.com/mcp".into()),
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

    /// A scratch directory of the test's own, 0700, emptied first.
    #[cfg(unix)]
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("latchkey-store-unit-{name}-{}", std::process::id()));
        drop(fs::remove_dir_all(&dir));
        let mut builder = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).expect("scratch dir");
        dir
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_at_a_lock_or_record_path_is_not_followed() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let dir = scratch("links");
        let resource = "https://mcp.example.com/mcp";
        let locks = FileStore::new(dir.join("locks"));
        private_dir(&locks.dir).expect("lock dir");
        // A link where the lock file goes, to a file that must not come to exist.
        let target = dir.join("victim-file");
        symlink(&target, locks.path(resource).with_extension("lock")).expect("plant");
        assert!(FlowLock::acquire(&locks.dir, resource).is_err());
        assert!(!target.exists(), "the lock followed the link");
        // A link where a record goes, to a record somewhere else: not read.
        let elsewhere = FileStore::new(dir.join("elsewhere"));
        elsewhere.save(resource, &sample()).expect("save");
        let records = FileStore::new(dir.join("credentials"));
        private_dir(&records.dir).expect("record dir");
        symlink(elsewhere.path(resource), records.path(resource)).expect("plant");
        assert!(
            records.load(resource, "notes").is_err(),
            "the record was read through the link"
        );
        // A lock file is made 0600.
        let other = "https://other.example.com/mcp";
        let _held = FlowLock::acquire(&locks.dir, other).expect("lock");
        let mode = fs::metadata(locks.path(other).with_extension("lock"))
            .expect("lock file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(fs::remove_dir_all(&dir));
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn only_directories_and_records_of_this_users_own_are_used() {
        use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
        let dir = scratch("dirs");
        let state = dir.join("state");
        let records = FileStore::new(state.join("credentials"));
        private_dir(&records.dir).expect("made");
        assert_eq!((mode(&state), mode(&records.dir)), (0o700, 0o700));
        // Writable by others: refused, with the fix.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = private_dir(&records.dir).expect_err("writable by others");
        assert!(matches!(e, StoreError::Unsafe { .. }), "{e}");
        let fix = format!("chmod 700 {}", state.display());
        assert!(e.to_string().contains(&fix), "{e}");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");
        // A link as the state directory: refused, and nothing is made where it points.
        let elsewhere = dir.join("elsewhere");
        fs::create_dir(&elsewhere).expect("elsewhere");
        symlink(&elsewhere, dir.join("linked")).expect("plant");
        let e = private_dir(&dir.join("linked/locks")).expect_err("a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).expect("elsewhere").count(), 0);
        // Another user's directory or record: refused, and the record left in place.
        let resource = "https://mcp.example.com/mcp";
        records.save(resource, &sample()).expect("save");
        let path = records.path(resource);
        if chown(&path, Some(65534), Some(65534)).is_err() {
            println!("skipped: the other-user part needs root, to give a file away");
            return;
        }
        let e = records
            .load(resource, "notes")
            .expect_err("another user's record");
        let message = e.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("belongs to user 65534")
                && message.contains("chown"),
            "{message}"
        );
        assert!(path.exists());
        chown(&records.dir, Some(65534), Some(65534)).expect("chown");
        let e = private_dir(&records.dir).expect_err("another user's directory");
        assert!(e.to_string().contains("belongs to user 65534"), "{e}");
        drop(fs::remove_dir_all(&dir));
    }
}
