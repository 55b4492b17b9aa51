//! Floods: connections that send nothing or trickle, too many connections,
//! too many requests for the platform at once, and oversized request heads.
//!
//! Timeouts are set to a second so the tests run quickly; the assertions are
//! that a connection is closed within a generous bound, never how fast.

mod common;

use bytes::Bytes;
use common::{EnvOptions, TestEnv, bounded};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu")];

const SLOW_ROUTE: &str = r#"
- name: slow
  match: { path_prefix: /slow }
  installation: { id: 14 }
"#;

const HEALTHZ: &[u8] = b"GET /_proxy/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn env_with(routes: &str, extra_yaml: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes,
        installations: INSTALLATIONS,
        extra_yaml,
        ..EnvOptions::default()
    })
    .await
}

/// Reads until the peer closes (end of stream or reset) and returns what
/// arrived; fails the test if that takes longer than `secs`.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    secs: u64,
    what: &str,
) -> Vec<u8> {
    bounded(secs, what, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// Reads one HTTP/1.1 response with a `content-length` and returns its
/// status line and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.expect("read a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = stream.read(&mut buf).await.expect("read a response body");
        assert!(n > 0, "closed inside a response body");
        got.extend_from_slice(&buf[..n]);
    }
    let status = head.lines().next().unwrap_or_default().to_owned();
    let body = String::from_utf8_lossy(&got[head_end..head_end + length]).into_owned();
    (status, body)
}

/// Sends `head` a byte every 200 ms (about 10 s in all) and asserts the
/// proxy closes the connection well before the head is complete.
async fn trickle_until_closed(stream: TcpStream, head: &'static [u8], what: &str) {
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for byte in head {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Keep the write half open: closing it would end the head early.
        std::future::pending::<()>().await;
    });
    let got = read_until_closed(&mut read, 6, what).await;
    writer.abort();
    assert!(
        got.is_empty() || !String::from_utf8_lossy(&got).contains("200 OK"),
        "the trickled request was served: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_header_read() {
    bounded(30, "silent connection", async {
        // A long idle timeout: only the header-read clock, started at
        // accept (before protocol detection sees a byte), can close it.
        let env = env_with(SLOW_ROUTE, "timeouts: { idle: 60s, header_read: 1s }").await;
        let mut silent = TcpStream::connect(env.addr).await.expect("connect");
        let got = read_until_closed(&mut silent, 10, "the proxy closes a silent connection").await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn an_http2_connection_without_requests_is_closed_after_idle() {
    bounded(30, "h2 preface only", async {
        let env = env_with(SLOW_ROUTE, "timeouts: { idle: 1s, header_read: 60s }").await;
        let mut conn = TcpStream::connect(env.addr).await.expect("connect");
        conn.write_all(H2_PREFACE_AND_SETTINGS)
            .await
            .expect("send the preface");
        let got = read_until_closed(&mut conn, 10, "the proxy closes an idle h2 connection").await;
        // Frames: 3-byte length, type, flags, 4-byte stream id, payload.
        let mut types = Vec::new();
        let mut rest = &got[..];
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            types.push(rest[3]);
            rest = &rest[(9 + len).min(rest.len())..];
        }
        assert!(
            types.contains(&0x7),
            "no GOAWAY among frame types {types:?}"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn idle_connections_close_after_a_request_but_not_during_one() {
    bounded(30, "idle after requests", async {
        let env = env_with(SLOW_ROUTE, "timeouts: { idle: 1s, header_read: 60s }").await;

        // HTTP/1.1 keep-alive: a request that takes longer than `idle` is
        // in flight, not idle; afterwards the connection closes.
        let io = TokioIo::new(TcpStream::connect(env.addr).await.expect("connect"));
        let (mut h1, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .expect("h1 handshake");
        let h1_conn = tokio::spawn(conn);
        let resp = h1
            .send_request(get("/slow/1500"))
            .await
            .expect("h1 slow request");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("h1 body")
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("1500"));
        bounded(10, "the proxy closes the idle h1 connection", h1_conn)
            .await
            .expect("h1 connection task")
            .expect("the h1 connection ends cleanly");

        // HTTP/2 likewise, closed with a GOAWAY that hyper's client accepts.
        let io = TokioIo::new(TcpStream::connect(env.addr).await.expect("connect"));
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        let h2_conn = tokio::spawn(conn);
        let resp = h2
            .send_request(get("/slow/1500"))
            .await
            .expect("h2 slow request");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("h2 body");
        bounded(10, "the proxy closes the idle h2 connection", h2_conn)
            .await
            .expect("h2 connection task")
            .expect("the h2 connection ends cleanly");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn trickled_request_heads_are_closed_after_header_read() {
    bounded(40, "trickled heads", async {
        let env = env_with(SLOW_ROUTE, "timeouts: { idle: 60s, header_read: 1s }").await;

        // The first request head, a byte at a time.
        let conn = TcpStream::connect(env.addr).await.expect("connect");
        trickle_until_closed(conn, HEALTHZ, "the proxy closes a trickled first head").await;

        // A keep-alive connection may idle longer than `header_read` (idle
        // is 60 s); its next head, trickled, is then timed from its first byte.
        let mut conn = TcpStream::connect(env.addr).await.expect("connect");
        conn.write_all(HEALTHZ).await.expect("send a request");
        let (status, _) = read_response(&mut conn).await;
        assert!(status.contains("200"), "{status}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        conn.write_all(HEALTHZ)
            .await
            .expect("send a second request");
        let (status, body) = read_response(&mut conn).await;
        assert!(
            status.contains("200"),
            "an idle keep-alive connection was closed: {status}"
        );
        assert_eq!(body, "ok\n");
        trickle_until_closed(conn, HEALTHZ, "the proxy closes a trickled later head").await;
        env.shutdown().await;
    })
    .await
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .expect("a valid request")
}

/// `atomgit_proxy_open_connections`, read over `conn`.
async fn open_connections(conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u64 {
    let resp = conn
        .send_request(get("/_proxy/metrics"))
        .await
        .expect("the metrics request");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp
        .into_body()
        .collect()
        .await
        .expect("metrics body")
        .to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("atomgit_proxy_open_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no open-connections gauge in {}",
                String::from_utf8_lossy(&text)
            )
        })
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_and_open_ones_serve() {
    bounded(40, "connection cap", async {
        const CAP: u64 = 8;
        let env = env_with(SLOW_ROUTE, "limits: { max_connections: 8 }").await;

        // A keep-alive connection opened before the flood.
        let io = TokioIo::new(TcpStream::connect(env.addr).await.expect("connect"));
        let (mut keep, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        assert_eq!(open_connections(&mut keep).await, 1);

        // Ten times the cap of connections that send nothing: the kernel
        // completes every handshake, the proxy accepts only up to the cap.
        let mut silent = Vec::new();
        for _ in 0..CAP * 10 {
            silent.push(TcpStream::connect(env.addr).await.expect("connect"));
        }
        bounded(10, "the proxy accepts up to the cap", async {
            while open_connections(&mut keep).await < CAP {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            open_connections(&mut keep).await,
            CAP,
            "more than the cap accepted"
        );

        // A new caller waits in the backlog; the open connection still serves.
        let mut probe = TcpStream::connect(env.addr).await.expect("connect");
        probe.write_all(HEALTHZ).await.expect("send healthz");
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), probe.read(&mut byte))
                .await
                .is_err(),
            "a connection past the cap was served"
        );
        let resp = keep
            .send_request(get("/_proxy/healthz"))
            .await
            .expect("healthz");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("healthz body");

        // Once the flood goes away, the waiting caller is served.
        drop(silent);
        let (status, body) =
            bounded(10, "healthz after the flood", read_response(&mut probe)).await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(body, "ok\n");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn requests_to_the_platform_wait_for_max_upstream_requests() {
    bounded(40, "upstream concurrency", async {
        let env = env_with(SLOW_ROUTE, "limits: { max_upstream_requests: 3 }").await;
        let replies = futures_util::future::join_all((0..20).map(|_| env.get("/slow/300"))).await;
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(env.fake.api_requests().len(), 20);
        let most = env.fake.max_concurrent_api_requests();
        assert!(most <= 3, "{most} requests at the platform at once");
        assert!(most > 1, "the requests were serialised");
        env.shutdown().await;
    })
    .await
}

/// Writes a raw HTTP/1.1 request with one `x-big` header of `size` bytes and
/// returns the response's status line and body.
async fn big_head(addr: SocketAddr, path: &str, size: usize) -> (String, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(size)
    );
    conn.write_all(request.as_bytes())
        .await
        .expect("send the request");
    bounded(10, "the answer to a big head", read_response(&mut conn)).await
}

#[tokio::test]
async fn request_heads_over_max_header_bytes_are_431() {
    bounded(40, "header sizes", async {
        let env = env_with(common::YANQIANYU_ROUTE, "").await;
        let big = "b".repeat(60 * 1024);

        // Under the default 64 KiB: forwarded, on HTTP/1.1 and HTTP/2.
        let reply = env
            .request(
                http::Method::GET,
                "/orgs/yanqianyu/h1",
                &[("x-big", &big)],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            env.last_api_request("/orgs/yanqianyu/h1").headers["x-big"],
            big.as_str()
        );
        let h2 = common::h2_client();
        let reply = common::send(
            &h2,
            common::request(
                http::Method::GET,
                &env.url("/orgs/yanqianyu/h2"),
                &[("x-big", &big)],
                common::full(""),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            env.last_api_request("/orgs/yanqianyu/h2").headers["x-big"],
            big.as_str()
        );

        // Over it: 431, nothing forwarded.
        let (status, _) = big_head(env.addr, "/orgs/yanqianyu/h1-big", 70 * 1024).await;
        assert!(status.contains("431"), "{status}");
        let huge = "h".repeat(70 * 1024);
        let reply = common::send(
            &h2,
            common::request(
                http::Method::GET,
                &env.url("/orgs/yanqianyu/h2-big"),
                &[("x-big", &huge)],
                common::full(""),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(
            !env.fake
                .api_requests()
                .iter()
                .any(|r| r.path.ends_with("-big")),
            "an oversized head was forwarded"
        );
        env.shutdown().await;

        // A limit under hyper's smallest read buffer is still exact, and the
        // proxy's own 431 has the contract's JSON shape.
        let env = env_with(
            common::YANQIANYU_ROUTE,
            "limits: { max_header_bytes: 2KiB }",
        )
        .await;
        let (status, body) = big_head(env.addr, "/orgs/yanqianyu/h1-small", 1024).await;
        assert!(status.contains("200"), "{status} {body}");
        let (status, body) = big_head(env.addr, "/orgs/yanqianyu/h1-big", 3 * 1024).await;
        assert!(status.contains("431"), "{status}");
        assert!(body.contains("\"bad_request\""), "{body}");
        let three_k = "c".repeat(3 * 1024);
        let reply = common::send(
            &common::h2_client(),
            common::request(
                http::Method::GET,
                &env.url("/orgs/yanqianyu/h2-big"),
                &[("x-big", &three_k)],
                common::full(""),
            ),
        )
        .await;
        reply.assert_proxy_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_request");
        assert!(
            !env.fake
                .api_requests()
                .iter()
                .any(|r| r.path.ends_with("-big")),
            "an oversized head was forwarded"
        );
        env.shutdown().await;
    })
    .await
}
