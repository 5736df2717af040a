//! tokend's domain: connection records, token sets, statuses, error classes,
//! the refresh policy, the clock and connection events. Depends on neither tonic, sled nor reqwest.

mod clock;
mod connection;
pub mod event;
mod id;
mod policy;
pub mod steps;
mod token;

pub use clock::{Clock, Timestamp, WALL_JUMP_TOLERANCE, WallJump};
pub use connection::{Connection, ErrorClass, LastError, ReconnectCause, Status};
pub use event::{ConnectionMeta, Event, EventType, NewEvent};
pub use id::{ConnectionId, IdError, ProviderName, derive_connection_id};
pub use policy::RefreshPolicy;
pub use token::{TokenSet, fingerprint};

/// Re-exported so every crate names the same secret type.
pub use secrecy::{ExposeSecret, SecretString};
