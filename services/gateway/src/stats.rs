//! Request counters per capability and outcome ("generate ok", "vary invalid_argument", ...).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Counts requests by capability and outcome.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// "capability outcome" → count.
    counts: Mutex<BTreeMap<String, u64>>,
}

impl RequestStats {
    /// Counts one request of `capability` that ended with `outcome` ("ok", a status code name
    /// such as "invalid_argument", or "cancelled").
    pub fn record(&self, capability: &str, outcome: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(format!("{capability} {outcome}")).or_default() += 1;
    }

    /// Counts one request by its result.
    pub fn record_result<T>(&self, capability: &str, result: &Result<T, tonic::Status>) {
        match result {
            Ok(_) => self.record(capability, "ok"),
            Err(status) => self.record(capability, &code_name(status.code())),
        }
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
        stats.record_result::<()>("generate", &Ok(()));
        stats.record_result::<()>("generate", &Ok(()));
        stats.record_result::<()>("vary", &Err(tonic::Status::invalid_argument("x")));
        let snap = stats.snapshot();
        assert_eq!(snap["generate ok"], 2);
        assert_eq!(snap["vary invalid_argument"], 1);
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "deadline_exceeded"
        );
    }
}
