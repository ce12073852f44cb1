//! [`ReplicaConfig`]: attempts, timeouts, backoff, DNS refresh and probing of a replica set.

use std::fmt;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How a [`ReplicaSet`](crate::ReplicaSet) connects, retries and backs off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Total attempts per call, across replicas (at least 1 is always made). Default 3.
    pub max_attempts: u32,
    /// Limit on opening a TCP connection to one replica, so a black-holed address fails fast
    /// and the call moves on. Default 2 s.
    pub connect_timeout: Duration,
    /// How long a replica that could not serve a call is skipped; doubles with each
    /// consecutive failure. Default 500 ms.
    pub backoff_min: Duration,
    /// The cap of that doubling. Default 10 s.
    pub backoff_max: Duration,
    /// How often DNS names are resolved again, adding and dropping replicas.
    /// [`Duration::ZERO`] resolves only once, in [`ReplicaSet::new`](crate::ReplicaSet::new).
    /// Default 30 s.
    pub dns_refresh: Duration,
    /// How often a set built with [`ReplicaSet::probed`](crate::ReplicaSet::probed) probes
    /// every replica again (new ones and ones that just failed are probed at once).
    /// [`Duration::ZERO`] probes only those. Default 5 s.
    pub probe_interval: Duration,
    /// TLS to every replica (`https`), verified against a CA, with a client certificate for
    /// mutual TLS when given. `None` (the default): plaintext.
    pub tls: Option<ClientTls>,
}

/// TLS towards the replicas: the CA that issued their certificates and, for mutual TLS, the
/// client's own certificate and key (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate(s) the replicas' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key, presented to replicas that ask.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// tonic's configuration for a replica whose certificate must name `host` (a DNS name or
    /// an IP address, as configured).
    pub fn config_for(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            dns_refresh: Duration::from_secs(30),
            probe_interval: Duration::from_secs(5),
            tls: None,
        }
    }
}

impl ReplicaConfig {
    /// How long a call waits before retrying after its `busy_failures`-th RESOURCE_EXHAUSTED:
    /// [`backoff`](Self::backoff)`(n)` with equal jitter, uniformly in `[b/2, b]`, so calls
    /// pushed back together do not return together.
    pub fn busy_backoff(&self, busy_failures: u32) -> Duration {
        let full = self.backoff(busy_failures);
        let half = full / 2;
        half + full.saturating_sub(half).mul_f64(rand::random::<f64>())
    }

    /// How long a replica is skipped after `consecutive_failures` failures in a row (at
    /// least 1): `backoff_min * 2^(n-1)`, at most `backoff_max`.
    pub fn backoff(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(31);
        self.backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = ReplicaConfig::default();
        let ms = |n| config.backoff(n).as_millis();
        assert_eq!(ms(1), 500);
        assert_eq!(ms(2), 1000);
        assert_eq!(ms(3), 2000);
        assert_eq!(ms(5), 8000);
        assert_eq!(ms(6), 10_000);
        assert_eq!(ms(100), 10_000);
        assert_eq!(ms(u32::MAX), 10_000);
        // Zero failures is treated as one.
        assert_eq!(ms(0), 500);
    }

    /// The busy backoff stays within half and all of the plain backoff.
    #[test]
    fn busy_backoff_is_jittered_within_bounds() {
        let config = ReplicaConfig::default();
        for n in [1, 2, 3, 10] {
            let full = config.backoff(n);
            for _ in 0..200 {
                let delay = config.busy_backoff(n);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "{n}: {delay:?} of {full:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_never_exceeds_a_small_cap() {
        let config = ReplicaConfig {
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(1),
            ..ReplicaConfig::default()
        };
        assert_eq!(config.backoff(1), Duration::from_secs(1));
    }
}
