//! Deadlines on the wire: putting the time left on a request (`grpc-timeout`) and reading it
//! back in a server handler, so a deadline set by the gateway's client reaches every stage.

use std::time::Duration;

use tokio::time::Instant;

/// The gRPC metadata key carrying a request's timeout.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// `tonic::Request::new(message)`, with `set_timeout(t)` when `timeout` is `Some`: the
/// request to make inside [`ReplicaSet::call`](crate::ReplicaSet::call)'s closure.
pub fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// The deadline a server handler received: `now + grpc-timeout` of `request`. `None` when the
/// header is absent or malformed, or the deadline is too far away to represent.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let value = request.metadata().get(GRPC_TIMEOUT)?.to_str().ok()?;
    Instant::now().checked_add(parse_grpc_timeout(value)?)
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits, then one unit letter: `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds),
/// as the gRPC over HTTP/2 spec defines it. `None` for anything else.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 8 digits: even 99999999 hours fits in a u64 of seconds.
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("0S"), Some(Duration::ZERO));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "123456789S",
            "10x",
            "m",
            "S5",
            "+5S",
            "-5S",
            " 5S",
            "5 S",
            "5s",
            "1.5S",
            "5é",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn request_carries_the_timeout() {
        let with = request((), Some(Duration::from_millis(250)));
        let value = with.metadata().get(GRPC_TIMEOUT).unwrap().to_str().unwrap();
        assert_eq!(parse_grpc_timeout(value), Some(Duration::from_millis(250)));
        assert!(request((), None).metadata().get(GRPC_TIMEOUT).is_none());
    }

    #[tokio::test]
    async fn deadline_of_reads_the_header() {
        let before = Instant::now();
        let mut with = tonic::Request::new(());
        with.metadata_mut()
            .insert(GRPC_TIMEOUT, "1500m".parse().unwrap());
        let deadline = deadline_of(&with).unwrap();
        let after = Instant::now();
        assert!(deadline >= before + Duration::from_millis(1500));
        assert!(deadline <= after + Duration::from_millis(1500));

        let mut bad = tonic::Request::new(());
        bad.metadata_mut()
            .insert(GRPC_TIMEOUT, "15x".parse().unwrap());
        assert_eq!(deadline_of(&bad), None);
        assert_eq!(deadline_of(&tonic::Request::new(())), None);
    }
}
