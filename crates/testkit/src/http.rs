//! A small HTTP/1.1 client for tests of the gateway's HTTP API, over a plain `TcpStream`: one
//! request per connection (`Connection: close`), bodies with `Content-Length` or chunked,
//! multipart forms, Server-Sent Events read as they arrive, and a request whose body is sent
//! only in part (to see a 413 come back before the rest).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics showing it otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `POST path` with a JSON body.
    pub fn post_json(path: &str, body: &serde_json::Value) -> Self {
        Self::post(path, "application/json", body.to_string().into_bytes())
    }

    /// `POST path` with a body of `content_type`.
    pub fn post(path: &str, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// `POST path` with a multipart form.
    pub fn post_form(path: &str, form: Form) -> Self {
        let (content_type, body) = form.finish();
        Self::post(path, &content_type, body)
    }

    /// The same with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The request head (with `Content-Length` of the whole body) and the body.
    fn encode(&self, address: &str) -> (Vec<u8>, &[u8]) {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        (head.into_bytes(), &self.body)
    }

    /// Sends it to `address` (`host:port` or `http://host:port`) and reads the whole answer.
    pub async fn send(&self, address: &str) -> HttpAnswer {
        let mut reader = self.open(address, None).await;
        let (status, headers) = read_head(&mut reader).await;
        let chunked = is_chunked(&headers);
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader).await {
                body.extend_from_slice(&chunk);
            }
        } else {
            reader
                .read_to_end(&mut body)
                .await
                .expect("reading the body");
        }
        HttpAnswer {
            status,
            headers,
            body,
        }
    }

    /// Sends the head and only the first `sent` bytes of the body (announcing all of it), then
    /// reads the answer's head: what a server says before the rest arrives.
    pub async fn send_partly(&self, address: &str, sent: usize) -> HttpAnswer {
        let mut reader = self.open(address, Some(sent)).await;
        let (status, headers) = read_head(&mut reader).await;
        let mut body = Vec::new();
        if !is_chunked(&headers) {
            let _ = reader.read_to_end(&mut body).await;
        } else if let Some(chunk) = read_chunk(&mut reader).await {
            body = chunk;
        }
        HttpAnswer {
            status,
            headers,
            body,
        }
    }

    /// Sends it and returns the open answer as a stream of Server-Sent Events; panics unless
    /// it is a 200 of `text/event-stream`.
    pub async fn events(&self, address: &str) -> EventReader {
        let mut reader = self.open(address, None).await;
        let (status, headers) = read_head(&mut reader).await;
        assert_eq!(status, 200, "{headers:?}");
        let content_type = headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map_or("", |(_, v)| v.as_str());
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        EventReader {
            reader,
            chunked: is_chunked(&headers),
            text: String::new(),
        }
    }

    /// Connects and writes the head and `sent` bytes of the body (all of it with `None`).
    async fn open(&self, address: &str, sent: Option<usize>) -> BufReader<TcpStream> {
        let address = address.trim_start_matches("http://");
        let mut socket = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
        let (head, body) = self.encode(address);
        socket.write_all(&head).await.expect("writing the head");
        let body = &body[..sent.unwrap_or(body.len()).min(body.len())];
        // A server may answer and close before it reads everything: that is the point of
        // sending only part, so a failed write is not an error here.
        let _ = socket.write_all(body).await;
        BufReader::new(socket)
    }
}

/// Whether the answer's body is chunked.
fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
}

/// Reads the status line and the headers.
async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("the status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (status, headers)
}

/// The next chunk of a chunked body; `None` at its end (or when the connection closes).
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `event:` name.
    pub event: String,
    /// Its `data:` parsed as JSON.
    pub data: serde_json::Value,
}

/// An open stream of Server-Sent Events; dropping it closes the connection.
#[derive(Debug)]
pub struct EventReader {
    reader: BufReader<TcpStream>,
    chunked: bool,
    text: String,
}

impl EventReader {
    /// The next event, or `None` when the server has ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a comment or keep-alive
                }
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("event {event}: data is not JSON ({e}): {data}"));
                return Some(SseEvent { event, data });
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader).await?
            } else {
                let mut buffer = vec![0; 8192];
                let n = self.reader.read(&mut buffer).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.truncate(n);
                buffer
            };
            self.text.push_str(&String::from_utf8_lossy(&more));
        }
    }

    /// Every event up to the end of the stream.
    pub async fn collect(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// A `multipart/form-data` body.
#[derive(Debug, Clone)]
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    /// An empty form.
    pub fn new() -> Self {
        Self {
            boundary: "unclip-test-boundary-7MA4YWxkTrZu0gW".into(),
            body: Vec::new(),
        }
    }

    /// With a text field.
    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self
    }

    /// With a file part (`image/png`).
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// The content type and the body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            self.body,
        )
    }
}
