//! Choosing the credential store for this process, once, from the config's `store`
//! key, and the directories it uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latchkey_auth::session::Credentials;
use latchkey_auth::store::{self, FileStore, KeyringStore, MemoryStore, Store, StoreError};

use crate::config::StoreKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreUnavailable {
    #[error(
        "store = \"keyring\" but the keyring is not usable: {cause}. Start and unlock it, or set store = \"file\" in the config"
    )]
    Keyring { cause: String },
    #[error(transparent)]
    NoStateDir(#[from] NoStateDir),
    /// A directory latchkey must not use (see `latchkey_auth::store::private_dir`).
    #[error(transparent)]
    Directory(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
#[error(
    "neither XDG_STATE_HOME nor HOME is set to an absolute path, so latchkey has no state directory for credentials and locks; set XDG_STATE_HOME (or HOME), or state_dir in the config"
)]
pub struct NoStateDir;

/// The store in use and, for `auto`, why it is not the keyring.
#[derive(Debug, Clone)]
pub struct Opened {
    pub credentials: Credentials,
    pub fallback: Option<String>,
}

/// `$XDG_STATE_HOME/latchkey`, else `~/.local/state/latchkey`. Never the system temp
/// directory: every user may write there, so another user could plant the directory
/// first, with records or links in it.
pub fn state_dir() -> Result<PathBuf, NoStateDir> {
    crate::config::xdg_dir("XDG_STATE_HOME", ".local/state")
        .map(|dir| dir.join("latchkey"))
        .ok_or(NoStateDir)
}

/// The user's runtime directory as a desktop login makes it (pam_systemd):
/// `/run/user/$UID`, when it exists, is a directory and belongs to this user. Found
/// from the user ID alone, not from `$XDG_RUNTIME_DIR`, because a parent may start
/// latchkey without it (Codex gives its stdio servers only HOME, PATH, LANG, SHELL
/// and TERM) and every process of the user must find the same locks.
pub fn runtime_dir() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = rustix::process::getuid().as_raw();
    let dir = PathBuf::from(format!("/run/user/{uid}"));
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid).then_some(dir)
}

/// Where the per-server lock files go: `/run/user/$UID/latchkey` (per user, cleared
/// at logout), else the state dir's `locks`. Either way a function of the user and
/// the state dir only, which every process sharing a file store agrees on already.
/// [`open`] refuses it (and a runtime directory that others may write to), rather
/// than passing over it, so that no two processes pick different ones.
pub fn lock_dir() -> Result<PathBuf, NoStateDir> {
    match runtime_dir() {
        Some(dir) => Ok(dir.join("latchkey")),
        None => Ok(state_dir()?.join("locks")),
    }
}

/// The session bus the keyring is reached through: `$DBUS_SESSION_BUS_ADDRESS`, else
/// the runtime directory's `bus` socket, as the D-Bus library derives it.
pub fn session_bus() -> Option<String> {
    std::env::var("DBUS_SESSION_BUS_ADDRESS")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            let runtime = std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(runtime_dir)?;
            let bus = runtime.join("bus");
            bus.exists()
                .then(|| format!("unix:path={} (derived)", bus.display()))
        })
}

/// Opens the configured store. `auto` probes the keyring (on a blocking thread: the
/// probe talks D-Bus) and falls back to files with a warning that says why. With a
/// configured `state_dir`, files and locks both go there. The directories are made
/// and checked first: one that another user could use is refused, with the fix.
pub async fn open(kind: StoreKind, state: Option<&Path>) -> Result<Opened, StoreUnavailable> {
    let file = || -> Result<Arc<dyn Store>, StoreUnavailable> {
        let files = match state {
            Some(dir) => dir.join("credentials"),
            None => state_dir()?.join("credentials"),
        };
        store::private_dir(&files)?;
        Ok(FileStore::new(files))
    };
    let shared = |store: Arc<dyn Store>| -> Result<Credentials, StoreUnavailable> {
        let locks = match state {
            Some(dir) => dir.join("locks"),
            None => lock_dir()?,
        };
        store::private_dir(&locks)?;
        Ok(Credentials {
            store,
            lock_dir: Some(locks),
        })
    };
    let probe = || async {
        tokio::task::spawn_blocking(KeyringStore::probe)
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let (credentials, fallback) = match kind {
        StoreKind::Memory => (
            Credentials {
                store: MemoryStore::new(),
                lock_dir: None,
            },
            None,
        ),
        StoreKind::File => (shared(file()?)?, None),
        StoreKind::Keyring => match probe().await {
            Ok(()) => (shared(KeyringStore::new())?, None),
            Err(cause) => return Err(StoreUnavailable::Keyring { cause }),
        },
        StoreKind::Auto => match probe().await {
            Ok(()) => (shared(KeyringStore::new())?, None),
            Err(cause) => {
                let store = file()?;
                let why = format!(
                    "the OS keyring is not usable ({cause}); credentials go to files in {} instead (mode 0600). Start and unlock a keyring, or set store = \"file\" to silence this",
                    store.location()
                );
                (shared(store)?, Some(why))
            }
        },
    };
    Ok(Opened {
        credentials,
        fallback,
    })
}
