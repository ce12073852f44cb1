//! Reading a service's `GET /metrics` (OpenMetrics text beside gRPC on the same port), and plain
//! HTTP/1.1 GETs of its other routes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer of `GET /metrics` (or of another [`http_get`]).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    /// The `content-type` header's value (lower-cased), or "".
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl Scrape {
    /// Asserts a `200 OK` answer of OpenMetrics text.
    pub fn assert_openmetrics(&self) {
        assert_eq!(self.status, "HTTP/1.1 200 OK", "{}", self.body);
        assert!(
            self.content_type
                .starts_with("application/openmetrics-text"),
            "{}",
            self.content_type
        );
    }

    /// The value of `series` (name and labels, as written); panics naming it when absent.
    pub fn value(&self, series: &str) -> f64 {
        metric(&self.body, series)
    }
}

/// `GET /metrics` of the service at `address` (`host:port`, or the gRPC URL
/// `http://host:port`), over plain HTTP/1.1.
pub async fn scrape(address: &str) -> Scrape {
    http_get(address, "/metrics").await
}

/// `GET path` of the service at `address` (`host:port`, or `http://host:port`), over plain
/// HTTP/1.1 with `Connection: close`; the body as text (no chunked encoding expected).
pub async fn http_get(address: &str, path: &str) -> Scrape {
    http_get_with(address, path, &[]).await
}

/// [`http_get`] with more request headers, e.g. `[("authorization", "Bearer KEY")]`.
pub async fn http_get_with(address: &str, path: &str, headers: &[(&str, &str)]) -> Scrape {
    let address = address.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address} for {path}: {e}"));
    get_over(socket, address, path, headers).await
}

/// `GET path` with `headers` over an open connection `socket` to `address`.
pub(crate) async fn get_over(
    mut socket: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Scrape {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify after the body; what was read is the answer.
    let _ = socket.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Scrape {
        status: head.lines().next().unwrap_or("").to_string(),
        content_type,
        body: body.to_string(),
    }
}

/// The value of `series` (name and labels, as written) in a `/metrics` text; panics naming it
/// when absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}
