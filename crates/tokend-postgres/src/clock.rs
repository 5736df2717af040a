//! The fleet's clock: PostgreSQL's `clock_timestamp()`, which every replica
//! anchors its clock to at start and follows forward (`Store::fleet_now`),
//! so one replica's wall clock, stepped by NTP or set wrong, cannot make it
//! take over the others' live leases or serve tokens they stamped expired.

use tokend_core::Timestamp;
use tokend_store::StoreError;

use crate::{PgError, timed::Untimed};

/// The database's wall time in Unix milliseconds, as the statement runs
/// (`clock_timestamp()`, not the transaction's `now()`).
const NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";

impl Untimed {
    /// The database's time now: read in the middle of the round trip (as
    /// far as this side can tell), so half the round trip is added to
    /// carry it to the moment the answer arrived.
    pub(crate) async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(NOW_MS).await.map_err(PgError::from)?;
        let sent = tokio::time::Instant::now();
        let row = client
            .query_one(&statement, &[])
            .await
            .map_err(PgError::from)?;
        let round_trip = sent.elapsed();
        let millis: i64 = row.try_get(0).map_err(PgError::from)?;
        Ok(Some(
            Timestamp::from_unix_millis(millis).saturating_add(round_trip / 2),
        ))
    }
}
