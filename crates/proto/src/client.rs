//! What every client of the unCLIP services agrees on: the message limit and endpoint URLs.

/// Largest encoded gRPC message, each way, that the services accept and the clients send or
/// take (64 MiB). A 1024×1024 RGB image is 12 MiB as a float32 tensor (3 MiB as raw bytes,
/// less as PNG); 64 MiB leaves room for a small batch of them plus the protobuf framing.
/// tonic's own default (4 MiB) would refuse a single such tensor.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// `url` with `http://` in front when it names no scheme (`127.0.0.1:50051` is accepted
/// wherever a URL is).
pub fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_gets_http() {
        assert_eq!(with_scheme("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(with_scheme("https://a:1"), "https://a:1");
    }
}
