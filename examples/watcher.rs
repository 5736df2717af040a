//! A service reacting to RECONNECT_REQUIRED: it watches a connection and,
//! when the provider revokes the grant, stops using it and says so, once.
//!
//! ```sh
//! cargo run --example watcher -- sandbox-portal-123
//! ```

use futures::StreamExt as _;
use tokend_client::{Client, Error, WatchEventKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("TOKEND_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let connection_id = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sandbox-portal-123".into());
    let tokend = Client::builder(endpoint).connect().await?;
    let mut events = tokend.watch(&connection_id);
    while let Some(event) = events.next().await {
        match event {
            Ok(e) if e.reconnect_required() => {
                let why = e.connection.last_error.map(|l| l.code).unwrap_or_default();
                // Here a real service would pause its jobs for this customer
                // and ask them to reconnect.
                println!("RECONNECT_REQUIRED {connection_id}: {why}");
                return Ok(());
            }
            Ok(e) if e.kind == WatchEventKind::Deleted => {
                println!("DELETED {connection_id}");
                return Ok(());
            }
            Ok(e) => println!(
                "{:?} {connection_id} version {}",
                e.kind, e.connection.version
            ),
            Err(Error::NotFound { .. }) => anyhow::bail!("no connection {connection_id}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
