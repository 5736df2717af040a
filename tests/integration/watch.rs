//! WatchConnection, health, reflection and shutdown.
