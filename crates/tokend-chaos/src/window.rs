//! The strict-rotation window as the brokers measured it: each broker's
//! `tokend_refresh_window_seconds{step}` histograms, scraped from its admin
//! listener just before it is killed (and at the end), summed over the runs
//! of one mode, and printed as count, mean, median and p99 per step.

use std::{collections::BTreeMap, net::SocketAddr};

/// The steps in the order they happen (`tokend_core::steps`).
const ORDER: [&str; 10] = [
    "answer_wait",
    "answer_read",
    "parse",
    "wal_write",
    "wal_sync",
    "queue",
    "apply",
    "fsync",
    "ack",
    "commit",
];

#[derive(Clone, Debug, Default)]
struct Hist {
    /// `(upper bound, cumulative count)`, in scrape order.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn add(&mut self, other: &Hist) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.iter().map(|(b, _)| (*b, 0)).collect();
        }
        for ((_, n), (_, m)) in self.buckets.iter_mut().zip(&other.buckets) {
            *n += m;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The `q` quantile, interpolated within its bucket (as Prometheus'
    /// `histogram_quantile`).
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count as f64;
        let mut below = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                if bound.is_infinite() {
                    return below.0;
                }
                let in_bucket = (cumulative - below.1) as f64;
                let into = if in_bucket > 0.0 {
                    (rank - below.1 as f64) / in_bucket
                } else {
                    0.0
                };
                return below.0 + (bound - below.0) * into;
            }
            below = (bound, cumulative);
        }
        below.0
    }
}

/// One mode's steps, summed over the broker runs scraped.
#[derive(Debug, Default)]
pub struct Window {
    steps: BTreeMap<String, Hist>,
    pub scrapes: u64,
}

impl Window {
    /// Adds what the broker whose admin listener is `admin` measured since
    /// it started; nothing if it does not answer.
    pub async fn scrape(&mut self, http: &reqwest::Client, admin: SocketAddr) {
        let Ok(response) = http.get(format!("http://{admin}/metrics")).send().await else {
            return;
        };
        let Ok(text) = response.text().await else {
            return;
        };
        self.scrapes += 1;
        for (step, hist) in parse(&text) {
            self.steps.entry(step).or_default().add(&hist);
        }
    }

    pub fn print(&self, mode: &str) {
        println!(
            "{mode}: refresh window by step ({} scrapes), milliseconds:",
            self.scrapes
        );
        println!(
            "  {:<12} {:>9} {:>8} {:>8} {:>8}",
            "step", "count", "mean", "p50", "p99"
        );
        for step in ORDER {
            let Some(h) = self.steps.get(step) else {
                continue;
            };
            let mean = if h.count == 0 {
                0.0
            } else {
                h.sum / h.count as f64
            };
            println!(
                "  {step:<12} {:>9} {:>8.3} {:>8.3} {:>8.3}",
                h.count,
                mean * 1e3,
                h.quantile(0.5) * 1e3,
                h.quantile(0.99) * 1e3
            );
        }
    }
}

/// The window histograms in a scrape, by step.
fn parse(text: &str) -> BTreeMap<String, Hist> {
    let mut out: BTreeMap<String, Hist> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tokend_refresh_window_seconds_") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(step), Ok(value)) = (label("step"), value.trim().parse::<f64>()) else {
            continue;
        };
        let h = out.entry(step).or_default();
        match kind {
            "bucket" => {
                let bound = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                h.buckets.push((bound, value as u64));
            }
            "sum" => h.sum = value,
            "count" => h.count = value as u64,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_add_up_and_quantiles_interpolate() {
        let text = "tokend_refresh_window_seconds_sum{step=\"fsync\"} 0.01\n\
             tokend_refresh_window_seconds_count{step=\"fsync\"} 4\n\
             tokend_refresh_window_seconds_bucket{le=\"0.001\",step=\"fsync\"} 0\n\
             tokend_refresh_window_seconds_bucket{le=\"0.002\",step=\"fsync\"} 2\n\
             tokend_refresh_window_seconds_bucket{le=\"0.004\",step=\"fsync\"} 4\n\
             tokend_refresh_window_seconds_bucket{le=\"+Inf\",step=\"fsync\"} 4\n";
        let mut w = Window::default();
        for (step, hist) in parse(text).into_iter().chain(parse(text)) {
            w.steps.entry(step).or_default().add(&hist);
        }
        let h = &w.steps["fsync"];
        assert_eq!(h.count, 8);
        assert!((h.quantile(0.5) - 0.002).abs() < 1e-9);
        assert!((h.quantile(0.75) - 0.003).abs() < 1e-9);
    }
}
