//! Replica addresses: parsing `http://host:port` or `host:port`, and turning a DNS name into
//! one socket address per replica.

use std::net::{IpAddr, SocketAddr};

use tonic::transport::Uri;

use crate::ReplicaError;

/// One address as configured, normalised to `http://host:port`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `http://host:port`: the display name of an IP target and the prefix of a DNS one's,
    /// and the origin (HTTP/2 `:authority`) of every request sent to its replicas.
    pub(crate) url: String,
    /// `url` parsed.
    pub(crate) uri: Uri,
    /// Where it points.
    pub(crate) host: Host,
    /// The TCP port.
    pub(crate) port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP address, used as given: one replica.
    Ip(IpAddr),
    /// A DNS name: one replica per address it resolves to.
    Name(String),
}

impl Target {
    /// Parses one address. `stage` only labels errors.
    pub(crate) fn parse(stage: &str, address: &str) -> Result<Self, ReplicaError> {
        let bad = |reason: &str| ReplicaError::BadAddress {
            stage: stage.to_owned(),
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = address.trim();
        let url = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL or host:port"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported (no TLS), use http://")),
            _ => return Err(bad("the scheme must be http")),
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("a replica address has no path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("a replica address has no user info"));
        }
        let port = authority.port_u16().ok_or_else(|| bad("no port"))?;
        let host_text = authority.host();
        if host_text.is_empty() {
            return Err(bad("no host"));
        }
        // IPv6 literals come bracketed: `[::1]`.
        let bare = host_text.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host_text.to_owned()),
        };
        let url = format!("http://{host_text}:{port}");
        let uri = url.parse().map_err(|_| bad("not a URL or host:port"))?;
        Ok(Self {
            url,
            uri,
            host,
            port,
        })
    }

    /// The socket addresses of this target's replicas: the IP itself, or every distinct
    /// address the DNS name resolves to, in resolver order.
    pub(crate) async fn resolve(&self, stage: &str) -> Result<Vec<SocketAddr>, ReplicaError> {
        let name = match &self.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => name,
        };
        let found = tokio::net::lookup_host((name.as_str(), self.port))
            .await
            .map_err(|source| ReplicaError::Unresolved {
                stage: stage.to_owned(),
                address: self.url.clone(),
                source,
            })?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ReplicaError::ResolvesToNothing {
                stage: stage.to_owned(),
                address: self.url.clone(),
            });
        }
        Ok(addrs)
    }

    /// Whether [`resolve`](Self::resolve) can change over time.
    pub(crate) fn is_name(&self) -> bool {
        matches!(self.host, Host::Name(_))
    }

    /// The display name of the replica at `addr`: the URL, plus the IP for a DNS name.
    pub(crate) fn replica_name(&self, addr: SocketAddr) -> String {
        match self.host {
            Host::Ip(_) => self.url.clone(),
            Host::Name(_) => format!("{} ({})", self.url, addr.ip()),
        }
    }
}

/// Splits a comma-separated flag value into addresses, trimming each and dropping empties.
pub(crate) fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(address: &str) -> Result<Target, ReplicaError> {
        Target::parse("decoder", address)
    }

    #[test]
    fn splits_flag_values() {
        assert_eq!(parse_list("a:1, http://b:2"), vec!["a:1", "http://b:2"]);
        assert_eq!(parse_list(" a:1 ,, ,b:2,"), vec!["a:1", "b:2"]);
        assert!(parse_list("").is_empty());
        assert!(parse_list(" , ").is_empty());
    }

    #[test]
    fn parses_urls_and_bare_addresses() {
        let t = parse("decoder.svc:50053").unwrap();
        assert_eq!(t.url, "http://decoder.svc:50053");
        assert_eq!(t.host, Host::Name("decoder.svc".into()));
        assert_eq!(t.port, 50053);

        let t = parse("http://10.0.0.7:50053/").unwrap();
        assert_eq!(t.url, "http://10.0.0.7:50053");
        assert_eq!(t.host, Host::Ip("10.0.0.7".parse().unwrap()));

        let t = parse("[::1]:9").unwrap();
        assert_eq!(t.url, "http://[::1]:9");
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.replica_name("[::1]:9".parse().unwrap()), "http://[::1]:9");

        let t = parse(" localhost:7 ").unwrap();
        assert_eq!(
            t.replica_name("127.0.0.1:7".parse().unwrap()),
            "http://localhost:7 (127.0.0.1)"
        );
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "",
            "decoder.svc",
            "http://decoder.svc",
            "https://decoder.svc:443",
            "grpc://decoder.svc:1",
            "http://decoder.svc:1/path",
            "decoder.svc:port",
            "decoder.svc:99999",
            "http://user@decoder.svc:1",
            "http://:1",
        ] {
            assert!(
                matches!(parse(bad), Err(ReplicaError::BadAddress { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
