//! The event log on PostgreSQL: reading, bounds, pruning in chunks, saved
//! cursors and reader claims (one replica at a time per reader).

use std::time::Duration;

use tokend_core::{Event, NewEvent, Timestamp};
use tokend_store::{LogBounds, SavedCursor, StoreError};

use crate::timed::Untimed;

use super::*;

pub(super) async fn read_events(
    store: &Untimed,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    if after >= up_to || limit == 0 {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let rows = client.query(
            &prep(&client, "SELECT seq, body FROM tokend_events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3").await?,
            &[
                &to_i64("sequence", after)?,
                &to_i64("sequence", up_to)?,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let event: NewEvent =
                serde_json::from_str(row.get(1)).map_err(|e| StoreError::Corrupt {
                    id: "event log".into(),
                    reason: e.to_string(),
                })?;
            Ok(Event {
                seq: to_u64(row.get(0)),
                event,
            })
        })
        .collect()
}

pub(super) async fn event_bounds(store: &Untimed) -> Result<LogBounds, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            &prep(
                &client,
                "SELECT last_seq, (SELECT min(seq) FROM tokend_events) FROM tokend_log",
            )
            .await?,
            &[],
        )
        .await
        .map_err(db)?;
    let last = to_u64(row.get(0));
    store.inner.watermark.raise(last);
    let last = store.inner.watermark.get();
    let oldest = row
        .get::<_, Option<i64>>(1)
        .map_or(last + 1, |o| to_u64(o).min(last + 1));
    Ok(LogBounds {
        log_id: store.inner.log_id,
        oldest,
        last,
    })
}

pub(super) async fn prune_events(
    store: &Untimed,
    older_than: Timestamp,
    keep: u64,
) -> Result<u64, StoreError> {
    let client = store.client().await?;
    // A prefix only: everything up to the newest of "beyond the count"
    // and "before the first event young enough to keep".
    let row = client
        .query_one(
            &prep(
                &client,
                "SELECT last_seq,
                    (SELECT min(seq) FROM tokend_events WHERE at_ms >= $1)
             FROM tokend_log",
            )
            .await?,
            &[&older_than.unix_millis()],
        )
        .await
        .map_err(db)?;
    let last = to_u64(row.get(0));
    let by_count = last.saturating_sub(keep);
    let by_age = row
        .get::<_, Option<i64>>(1)
        .map_or(last, |first_young| to_u64(first_young).saturating_sub(1));
    let up_to = to_i64("sequence", by_count.max(by_age))?;
    let mut removed = 0;
    loop {
        // In chunks, so no statement holds many row locks for long.
        let n = client
            .execute(
                &prep(
                    &client,
                    "DELETE FROM tokend_events WHERE seq IN
                   (SELECT seq FROM tokend_events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
                )
                .await?,
                &[&up_to, &(PAGE * 10)],
            )
            .await
            .map_err(db)?;
        removed += n;
        if n < (PAGE * 10) as u64 {
            return Ok(removed);
        }
    }
}

pub(super) async fn load_cursor(
    store: &Untimed,
    name: &str,
) -> Result<Option<SavedCursor>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &prep(&client, "SELECT body FROM tokend_cursors WHERE name = $1").await?,
            &[&name],
        )
        .await
        .map_err(db)?;
    row.map(|row| serde_json::from_str(row.get(0)).map_err(json_error))
        .transpose()
}

pub(super) async fn save_cursor(
    store: &Untimed,
    name: &str,
    cursor: &SavedCursor,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(cursor).map_err(json_error)?;
    let fence = to_i64("fence", cursor.fence)?;
    let client = store.client().await?;
    // A save under an older claim than the stored one is a paused
    // replica's: ignored.
    client
        .execute(
            &prep(
                &client,
                "INSERT INTO tokend_cursors AS c (name, body, fence) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, fence = EXCLUDED.fence
             WHERE c.fence <= EXCLUDED.fence",
            )
            .await?,
            &[&name, &body, &fence],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn claim_reader(
    store: &Untimed,
    name: &str,
    holder: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let now_ms = now.unix_millis();
    let expires = now.saturating_add(ttl).unix_millis();
    let client = store.client().await?;
    // One statement: renew our own claim, take a free or expired one
    // (with a new fence), or get nothing while another's is live.
    let row = client
        .query_opt(
            &prep(
                &client,
                "INSERT INTO tokend_reader_claims AS r (name, holder, fence, expires_at_ms)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (name) DO UPDATE
               SET holder = EXCLUDED.holder,
                   fence = CASE WHEN r.holder = EXCLUDED.holder THEN r.fence ELSE r.fence + 1 END,
                   expires_at_ms = EXCLUDED.expires_at_ms
               WHERE r.holder = EXCLUDED.holder OR r.expires_at_ms <= $4
             RETURNING fence",
            )
            .await?,
            &[&name, &holder, &expires, &now_ms],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|row| to_u64(row.get(0))))
}
