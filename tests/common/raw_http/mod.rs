//! HTTP/1.1 by hand, for tests that pin down the wire: [`RawConn`] writes
//! exact bytes to the proxy and parses its answers itself, and [`RawUpstream`]
//! is a platform that answers API requests with whatever bytes a test gives
//! (chunked, close-delimited, many headers, slow, hanging up), minting an
//! installation token by itself so routes by installation id work.
//!
//! Every read is bounded by [`READ_SECS`]; a stalled read fails the test.

mod upstream;

// Not every test binary uses the upstream half.
#[allow(unused_imports)]
pub use upstream::*;

use super::bounded;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one read may stall.
pub const READ_SECS: u64 = 5;

/// A head's first line and its header lines, names as written.
#[derive(Debug, Clone)]
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Every value of `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad content-length {v:?}"))
        })
    }
}

/// A response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub head: Head,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether it came chunked.
    pub chunked: bool,
}

impl RawResponse {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
}

/// A byte stream with a read buffer and the HTTP/1 framing rules.
pub struct Wire<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(io: S) -> Self {
        Wire {
            io,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        bounded(READ_SECS, "writing", self.io.write_all(bytes))
            .await
            .expect("write");
    }

    /// Writes `bytes` in `piece`-byte writes a millisecond apart, so the
    /// peer sees them in many reads.
    pub async fn write_slowly(&mut self, bytes: &[u8], piece: usize) {
        for part in bytes.chunks(piece.max(1)) {
            self.write(part).await;
            self.io.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Reads more into the buffer; the count read (0: EOF or reset).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = bounded(READ_SECS, "reading", self.io.read(&mut chunk))
            .await
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next head, or `None` at EOF with nothing buffered.
    pub async fn read_head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = text.split("\r\n");
                let line = lines.next().unwrap_or_default().to_owned();
                let headers = lines
                    .map(|l| {
                        let (n, v) = l
                            .split_once(':')
                            .unwrap_or_else(|| panic!("bad line {l:?}"));
                        (n.to_owned(), v.trim().to_owned())
                    })
                    .collect();
                return Some(Head { line, headers });
            }
            assert!(self.buf.len() < 1 << 20, "head over 1 MiB");
            if self.fill().await == 0 {
                assert!(
                    self.buf.is_empty(),
                    "EOF inside a head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "EOF {} bytes short",
                n - self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill().await > 0, "EOF inside a chunked body");
        }
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..1_000_000 {
            let size_line = self.read_line().await;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
            if size == 0 {
                // Trailers, up to the blank line.
                while !self.read_line().await.is_empty() {}
                return body;
            }
            body.extend(self.read_exact(size).await);
            assert_eq!(
                self.read_exact(2).await,
                b"\r\n",
                "chunk not followed by CRLF"
            );
        }
        panic!("over a million chunks")
    }

    async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {
            assert!(
                self.buf.len() < 64 << 20,
                "close-delimited body over 64 MiB"
            );
        }
        std::mem::take(&mut self.buf)
    }

    /// One response; `head_request`: it answers a HEAD (no body whatever
    /// the headers say).
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let head = self.read_head().await.expect("a response, not EOF");
        let mut parts = head.line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", head.line));
        let chunked = head.has_token("transfer-encoding", "chunked");
        let body = if head_request || status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            self.read_chunked().await
        } else if let Some(n) = head.content_length() {
            self.read_exact(n).await
        } else {
            self.read_to_eof().await
        };
        RawResponse {
            head,
            version,
            status,
            body,
            chunked,
        }
    }

    /// A request's body by its framing (none without one).
    async fn read_request_body(&mut self, head: &Head) -> Vec<u8> {
        if head.has_token("transfer-encoding", "chunked") {
            self.read_chunked().await
        } else {
            let n = head.content_length().unwrap_or(0);
            self.read_exact(n).await
        }
    }

    /// Passes if the peer closes (EOF or reset) with nothing more sent.
    pub async fn expect_eof(&mut self) {
        let n = self.fill().await;
        assert_eq!(
            (n, self.buf.len()),
            (0, 0),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// A caller's connection to the proxy.
pub type RawConn = Wire<TcpStream>;

pub async fn connect(addr: SocketAddr) -> RawConn {
    let stream = bounded(READ_SECS, "connecting", TcpStream::connect(addr))
        .await
        .expect("connect to the proxy");
    // Small writes leave at once (see `write_slowly`).
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    Wire::new(stream)
}

/// `GET path HTTP/1.1` with a loopback Host and any `extra` header lines
/// (each ending in CRLF).
pub fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}
