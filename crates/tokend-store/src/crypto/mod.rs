//! Encryption at rest as the store's users see it: the keyring and sealed
//! fields (`sealing`, where the store's own modules take them from), and
//! the key files the server and the `tokend keys` commands manage (`keys`,
//! which works on a [`crate::SledStore`]).

pub mod keys;

pub use crate::sealing::{
    KeyEntry, KeyError, KeyFile, KeyMatch, KeyOrigin, Keyring, Sealed, load_or_create_key_file,
    unbound_associated_data,
};
