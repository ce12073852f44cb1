//! Request counters per capability and outcome ("generate ok", "vary invalid_argument", ...)
//! and the duration of the requests that succeeded, per capability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use unclip_server::metrics::Labels;
use unclip_server::metrics::prometheus_client::metrics::family::Family;
use unclip_server::metrics::prometheus_client::metrics::histogram::{
    Histogram, exponential_buckets,
};

use crate::error::Result;

/// Histograms of request seconds per capability.
pub type DurationFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Histograms of seconds by label, buckets from 50 ms to about 100 s.
pub fn duration_family() -> DurationFamily {
    Family::new_with_constructor(duration_histogram)
}

/// Buckets from 50 ms to about 100 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

/// Counts requests by capability and outcome.
#[derive(Debug)]
pub struct RequestStats {
    /// "capability outcome" → count.
    counts: Mutex<BTreeMap<String, u64>>,
    /// Seconds of successful requests, by capability.
    durations: DurationFamily,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            counts: Mutex::default(),
            durations: duration_family(),
        }
    }
}

impl RequestStats {
    /// Counts one request of `capability` that ended with `outcome` ("ok", a status code name
    /// such as "invalid_argument", or "cancelled").
    pub fn record(&self, capability: &str, outcome: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(format!("{capability} {outcome}")).or_default() += 1;
    }

    /// Counts one request by its result; a success also records how long it took.
    pub fn record_result<T>(&self, capability: &str, result: &Result<T>, elapsed: Duration) {
        match result {
            Ok(_) => {
                self.record(capability, "ok");
                let labels = vec![("capability".to_string(), capability.to_string())];
                self.durations
                    .get_or_create(&labels)
                    .observe(elapsed.as_secs_f64());
            }
            Err(error) => self.record(capability, &code_name(error.code())),
        }
    }

    /// The duration histograms (shared: a clone sees later observations).
    pub fn durations(&self) -> DurationFamily {
        self.durations.clone()
    }

    /// All counts.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// "invalid_argument" for `Code::InvalidArgument`, and so on.
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_lowercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let stats = RequestStats::default();
        let second = Duration::from_secs(1);
        stats.record_result::<()>("generate", &Ok(()), second);
        stats.record_result::<()>("generate", &Ok(()), second);
        let invalid = crate::Error::invalid("num_images", "x");
        stats.record_result::<()>("vary", &Err(invalid), second);
        let snap = stats.snapshot();
        assert_eq!(snap["generate ok"], 2);
        assert_eq!(snap["vary invalid_argument"], 1);
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "deadline_exceeded"
        );
    }
}
