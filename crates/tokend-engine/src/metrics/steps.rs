//! `tokend_refresh_window_seconds{step}`: the steps of the strict-rotation
//! window (`tokend_core::steps`), exported at each scrape from the
//! process-wide histograms the provider client, the engine and the store
//! record into.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};
use tokend_core::steps::{self, BOUNDS, Step};

/// Encodes every step's histogram; holds nothing itself.
#[derive(Debug)]
pub(super) struct WindowSteps;

impl Collector for WindowSteps {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "tokend_refresh_window",
            "Time from a provider's answer to the durable write of its grant, by step (answer_wait, answer_read, parse; the store's put as wal_write, wal_sync and queue, apply, fsync, ack; commit for all of it)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for step in Step::ALL {
            let snapshot = steps::snapshot(step);
            let buckets: Vec<(f64, u64)> = BOUNDS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(snapshot.counts.iter().copied())
                .collect();
            let labels = [("step", step.as_str())];
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    snapshot.sum_secs,
                    snapshot.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}
