//! The engine state machine, tested without I/O.
