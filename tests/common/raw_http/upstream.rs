//! [`RawUpstream`]: a platform on `127.0.0.1:0` that answers API requests
//! with the exact bytes a test gives ([`Answer`]: delayed, trickled, closing
//! after), and mints installation tokens by itself. It records every API
//! request with the connection it came on.

use super::{Head, Wire};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token [`RawUpstream`] mints for every installation.
pub const RAW_TOKEN: &str = "ats_raw_upstream_token";

/// An API request as [`RawUpstream`] received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Which accepted connection (0, 1, ...) it came on.
    pub conn: usize,
    pub head: Head,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn target(&self) -> &str {
        self.head.line.split(' ').nth(1).unwrap_or_default()
    }
}

/// What [`RawUpstream`] does with an API request.
pub struct Answer {
    /// Written as they are.
    pub bytes: Vec<u8>,
    /// Slept before writing.
    pub delay: Duration,
    /// Close the connection after writing.
    pub close: bool,
    /// Write in pieces of this many bytes a millisecond apart (0: at once).
    pub piece: usize,
}

impl Answer {
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            bytes: bytes.into(),
            delay: Duration::ZERO,
            close: false,
            piece: 0,
        }
    }

    pub fn close(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            close: true,
            ..Answer::keep(bytes)
        }
    }
}

/// `HTTP/1.1 200 OK` with a Content-Length body.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers API request number `n` (0-based, over all connections).
pub type Handler = Arc<dyn Fn(&RawRequest, usize) -> Answer + Send + Sync>;

/// A platform on `127.0.0.1:0` answering by hand.
pub struct RawUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<RawRequest>>>,
    accepted: Arc<AtomicUsize>,
    /// Connections whose reader saw the proxy close (EOF or error), or
    /// that were closed after an answer.
    closed: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(
        handler: impl Fn(&RawRequest, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let handler: Handler = Arc::new(handler);
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (received, accepted, closed) = (received.clone(), accepted.clone(), closed.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    let (handler, received, closed) =
                        (handler.clone(), received.clone(), closed.clone());
                    tokio::spawn(async move {
                        serve(Wire::new(stream), conn, &handler, &received).await;
                        closed.lock().expect("not poisoned").push(conn);
                    });
                }
            })
        };
        RawUpstream {
            addr,
            received,
            accepted,
            closed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API requests received so far (not the token mints).
    pub fn received(&self) -> Vec<RawRequest> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Connections accepted so far (the mint's included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Whether connection `conn` has ended (the proxy closed it, or it was
    /// closed after an answer).
    pub fn closed(&self, conn: usize) -> bool {
        self.closed.lock().expect("not poisoned").contains(&conn)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection until either side closes. Reads stall at most
/// [`READ_SECS`] each, panicking the connection's task (not the test).
async fn serve(
    mut wire: Wire<TcpStream>,
    conn: usize,
    handler: &Handler,
    received: &Mutex<Vec<RawRequest>>,
) {
    for _ in 0..10_000 {
        // An idle pooled connection may sit unused for long; wait for the
        // next head without the per-read bound.
        let mut chunk = [0u8; 16 * 1024];
        while !wire.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match wire.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => wire.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let Some(head) = wire.read_head().await else {
            return;
        };
        let body = wire.read_request_body(&head).await;
        let req = RawRequest { conn, head, body };
        let answer = if req.target().starts_with("/app/") {
            Answer::keep(mint_answer(req.target()))
        } else {
            let n = {
                let mut all = received.lock().expect("not poisoned");
                all.push(req.clone());
                all.len() - 1
            };
            handler(&req, n)
        };
        // Sleep, but notice the proxy hanging up meanwhile.
        let sleep = tokio::time::sleep(answer.delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                read = wire.io.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => wire.buf.extend_from_slice(&chunk[..n]),
                },
            }
        }
        let piece = if answer.piece == 0 {
            answer.bytes.len().max(1)
        } else {
            answer.piece
        };
        for part in answer.bytes.chunks(piece) {
            if wire.io.write_all(part).await.is_err() {
                return;
            }
            if answer.piece != 0 {
                let _ = wire.io.flush().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if answer.close {
            return;
        }
    }
}

/// The installation endpoints: a fixed token, a directory of one.
fn mint_answer(target: &str) -> Vec<u8> {
    let (status, body) = if target.ends_with("/access_tokens") {
        (
            "201 Created",
            format!(
                r#"{{"token":"{RAW_TOKEN}","expires_at":"2099-01-01T00:00:00+08:00","permissions":{{}}}}"#
            ),
        )
    } else {
        (
            "200 OK",
            r#"[{"id":14,"account":{"path":"yanqianyu"}}]"#.to_owned(),
        )
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
