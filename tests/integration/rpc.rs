//! Each RPC's happy path and error codes.
