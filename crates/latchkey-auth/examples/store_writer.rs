//! Saves credential records to a file store in a loop until killed: the child
//! process of the store tests' crash test (`kill -9` mid-write).
//!
//! Usage: store_writer DIR RESOURCE

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use latchkey_auth::Secret;
use latchkey_auth::store::{FileStore, Record, Store};
use latchkey_auth::token::TokenSet;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(resource)) = (args.next(), args.next()) else {
        eprintln!("usage: store_writer DIR RESOURCE");
        std::process::exit(2);
    };
    let store = FileStore::new(PathBuf::from(dir));
    for i in 0u64.. {
        // Records of different sizes, so a torn write would show.
        let record = Record {
            issuer: Some("https://auth.example.com".into()),
            resource_metadata_url: None,
            tokens: Some(TokenSet {
                access_token: Secret::new(format!("at-{i}")),
                refresh_token: Some(Secret::new(format!("rt-{i}"))),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
                scopes: (0..1 + i % 200).map(|s| format!("scope:{s:04}")).collect(),
                dpop: None,
            }),
            registration: None,
            ..Record::default()
        };
        if let Err(e) = store.save(&resource, &record) {
            eprintln!("store_writer: {e}");
            std::process::exit(1);
        }
    }
}
