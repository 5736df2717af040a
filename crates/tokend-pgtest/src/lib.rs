//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package, under a temp dir, on a free loopback port,
//! run as the `postgres` user when the tests run as root.
//!
//! One cluster per test process ([`cluster`]), one database per test
//! ([`Cluster::database`]), so tests stay isolated and cheap. A watchdog
//! process stops the cluster and removes its directory when the test process
//! ends, however it ends (panic, SIGKILL included).
//!
//! Missing binaries are an error with the install command in it: tests that
//! need PostgreSQL fail loudly, they are never skipped.
//!
//! [`Cluster::dedicated_tls`] starts a cluster that accepts TCP connections
//! only over TLS, with a server certificate for `localhost` and `127.0.0.1`
//! issued by a CA generated for it (its PEM is handed back, to verify with).

mod cluster;
mod tls;

pub use cluster::{Cluster, INSTALL_HINT, cluster, find_bin};
pub use tls::{TLS_CA_NAME, unrelated_ca_file};

#[cfg(test)]
mod tests;
