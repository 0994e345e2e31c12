//! The installation's DPoP key pairs (RFC 9449 §5: a DPoP-bound token, and a public
//! client's refresh token, work only with the key they were bound to): made once, on
//! the first need, and kept with the credentials (the keyring when the store is the
//! keyring) in a record of their own, so that a restart, a `latchkey stdio` and the
//! daemon all prove with the same key, and a logout of one server leaves it alone.
//! Made under a lock of its own, so two processes that need it at once agree on it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::dpop::Keys;
use crate::store::{FlowLock, Record, Store};

/// The record's id: not a URL, so no server's record can have it.
pub const RECORD_ID: &str = "latchkey:dpop-key";

/// The stored key pairs, or new ones, stored first. Blocks: run it on a blocking
/// thread.
pub fn load_or_create(store: &Arc<dyn Store>, lock_dir: Option<&PathBuf>) -> Result<Keys, String> {
    let _lock = lock_dir
        .map(|dir| FlowLock::acquire(dir, RECORD_ID))
        .transpose()?;
    let stored = store
        .load(RECORD_ID, "(DPoP key)")
        .map_err(|e| e.to_string())?
        .and_then(|record| record.dpop_keys);
    if let Some(stored) = stored {
        return Keys::from_secret(&stored).map_err(|e| {
            format!(
                "{e}: it is the record {RECORD_ID} of the {} store ({}); remove that record, and latchkey makes new keys (servers that bound tokens to the old ones then need a new login)",
                store.kind(),
                store.location()
            )
        });
    }
    let keys = Keys::generate().map_err(|e| e.to_string())?;
    let record = Record {
        dpop_keys: Some(keys.to_secret()),
        ..Record::default()
    };
    store.save(RECORD_ID, &record).map_err(|e| e.to_string())?;
    tracing::info!("made this installation's DPoP key pairs (RFC 9449)");
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn made_once_then_read_back() {
        let store: Arc<dyn Store> = MemoryStore::new();
        let first = load_or_create(&store, None).expect("made");
        let again = load_or_create(&store, None).expect("read");
        assert_eq!(first.es256.thumbprint(), again.es256.thumbprint());
        assert_eq!(first.eddsa.thumbprint(), again.eddsa.thumbprint());
    }

    #[test]
    fn an_unreadable_record_is_named_and_kept() {
        let store: Arc<dyn Store> = MemoryStore::new();
        let junk = Record {
            dpop_keys: Some(crate::Secret::new("es256.AAAA.eddsa.BBBB")),
            ..Record::default()
        };
        store.save(RECORD_ID, &junk).expect("save");
        let e = load_or_create(&store, None).expect_err("unreadable");
        assert!(e.contains(RECORD_ID) && e.contains("memory"), "{e}");
        assert!(!e.contains("AAAA"), "{e}");
        let kept = store.load(RECORD_ID, "").expect("load").expect("kept");
        assert_eq!(kept, junk, "never replaced silently");
    }
}
