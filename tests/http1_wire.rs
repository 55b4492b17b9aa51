//! HTTP/1.1 on the wire, caller side and upstream side, written and read by
//! hand (`common::raw_http`): keep-alive, pipelining, HTTP/1.0 and
//! `Connection: close`, HEAD, every response framing the platform may use
//! (chunked, close-delimited, none for 204/304), an upstream that drops its
//! idle connection, request bodies by length and chunked, malformed and
//! oversized heads, a caller hanging up mid-request, a 1 MiB download,
//! the absolute form, and many and repeated response headers.
//!
//! These pin down what the proxy does today so that any rewrite of the
//! HTTP/1 path (server or client side) must keep it.

mod common;

use common::raw_http::{self, Answer, RawConn, RawUpstream, ok};
use common::{EnvOptions, TestEnv, bounded, single_bearer};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Routes on the fake: the org's API, uploads, downloads.
const FAKE_ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: upload
  match: { path_prefix: /upload }
  installation: { id: 14 }
- name: download
  match: { path_prefix: /download }
  installation: { id: 14 }
";

/// The one route in front of a [`RawUpstream`].
const RAW_ROUTES: &str = "
- name: raw
  match: { path_prefix: /r }
  installation: { id: 14 }
";

async fn fake_env() -> TestEnv {
    TestEnv::start(FAKE_ROUTES, &[(14, "yanqianyu")]).await
}

async fn raw_env(upstream: &RawUpstream) -> TestEnv {
    raw_env_with(upstream, "").await
}

async fn raw_env_with(upstream: &RawUpstream, extra_yaml: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes: RAW_ROUTES,
        installations: &[(14, "yanqianyu")],
        extra_yaml,
        upstream: Some(upstream.url()),
        ..EnvOptions::default()
    })
    .await
}

/// Sends `req` on `conn` and reads one response.
async fn exchange(conn: &mut RawConn, req: &[u8]) -> raw_http::RawResponse {
    conn.write(req).await;
    conn.read_response(req.starts_with(b"HEAD ")).await
}

/// The fake echoes unknown paths as JSON naming the path.
fn echoed_path(resp: &raw_http::RawResponse) -> String {
    resp.json()["path"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn keep_alive_serves_three_requests_on_one_connection_with_the_token_and_host() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    for name in ["a", "b", "c"] {
        let path = format!("/orgs/yanqianyu/{name}");
        let resp = exchange(&mut conn, &raw_http::get(&path, "")).await;
        assert_eq!(resp.status, 200, "{}", resp.body_str());
        assert_eq!(resp.version, "HTTP/1.1");
        assert_eq!(echoed_path(&resp), path);
        assert_eq!(resp.json()["owner"], "installation:14");
        assert!(
            resp.head
                .get("connection")
                .is_none_or(|c| !c.eq_ignore_ascii_case("close"))
        );

        let seen = env.last_api_request(&path);
        single_bearer(&seen.headers);
        let fake_authority = env.fake.url().trim_start_matches("http://").to_owned();
        assert_eq!(
            seen.headers.get("host").and_then(|h| h.to_str().ok()),
            Some(fake_authority.as_str()),
            "the upstream sees its own authority as Host"
        );
    }
    env.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let mut both = raw_http::get("/orgs/yanqianyu/first", "");
    both.extend(raw_http::get("/orgs/yanqianyu/second", ""));
    conn.write(&both).await;
    let first = conn.read_response(false).await;
    let second = conn.read_response(false).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(echoed_path(&first), "/orgs/yanqianyu/first");
    assert_eq!(echoed_path(&second), "/orgs/yanqianyu/second");
    // And the connection is still good for a third.
    let third = exchange(&mut conn, &raw_http::get("/orgs/yanqianyu/third", "")).await;
    assert_eq!(echoed_path(&third), "/orgs/yanqianyu/third");
    env.shutdown().await;
}

#[tokio::test]
async fn http10_without_keep_alive_is_answered_then_closed() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(
        &mut conn,
        b"GET /orgs/yanqianyu/old HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(echoed_path(&resp), "/orgs/yanqianyu/old");
    assert!(!resp.chunked, "an HTTP/1.0 caller cannot read chunked");
    conn.expect_eof().await;
    env.shutdown().await;
}

#[tokio::test]
async fn connection_close_is_answered_with_connection_close_then_closed() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let req = raw_http::get("/orgs/yanqianyu/bye", "Connection: close\r\n");
    let resp = exchange(&mut conn, &req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(echoed_path(&resp), "/orgs/yanqianyu/bye");
    assert_eq!(
        resp.head.get("connection").map(str::to_ascii_lowercase),
        Some("close".to_owned())
    );
    conn.expect_eof().await;
    env.shutdown().await;
}

#[tokio::test]
async fn head_gets_the_upstream_length_and_no_body_and_the_connection_goes_on() {
    let upstream = RawUpstream::start(|req, _| {
        if req.head.line.starts_with("HEAD ") {
            Answer::keep(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12345\r\n\r\n",
            )
        } else {
            Answer::keep(ok("after the head"))
        }
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let head = exchange(
        &mut conn,
        b"HEAD /r/file HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.head.get("content-length"), Some("12345"));
    assert!(head.body.is_empty());
    // Had body bytes followed the HEAD answer, this would read them as a head.
    let next = exchange(&mut conn, &raw_http::get("/r/next", "")).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.body_str(), "after the head");
    let seen = upstream.received();
    assert!(
        seen[0].head.line.starts_with("HEAD /r/file "),
        "{:?}",
        seen[0].head
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_chunked_upstream_answer_arrives_whole_and_the_connection_is_reused() {
    let upstream = RawUpstream::start(|_, n| {
        if n == 0 {
            Answer::keep(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6;ext=1\r\n world\r\n1\r\n!\r\n0\r\n\r\n",
            )
        } else {
            Answer::keep(ok("second"))
        }
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let first = exchange(&mut conn, &raw_http::get("/r/chunked", "")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body_str(), "hello world!");
    let second = exchange(&mut conn, &raw_http::get("/r/second", "")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body_str(), "second");
    assert_eq!(upstream.received().len(), 2);
    env.shutdown().await;
}

#[tokio::test]
async fn a_close_delimited_upstream_answer_arrives_whole_and_a_new_upstream_connection_follows() {
    let body: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let expected = body.clone();
    let upstream = RawUpstream::start(move |_, n| {
        if n == 0 {
            Answer::close(format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}"
            ))
        } else {
            Answer::keep(ok("second"))
        }
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let first = exchange(&mut conn, &raw_http::get("/r/eof", "")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body_str(), expected);
    let second = exchange(&mut conn, &raw_http::get("/r/second", "")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body_str(), "second");
    let seen = upstream.received();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "a closed connection cannot be reused"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn bodiless_204_and_304_leave_the_connection_usable() {
    let upstream = RawUpstream::start(|_, n| match n {
        0 => Answer::keep("HTTP/1.1 204 No Content\r\nx-n: 0\r\n\r\n"),
        1 => Answer::keep("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        _ => Answer::keep(ok("third")),
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let no_content = exchange(&mut conn, &raw_http::get("/r/a", "")).await;
    assert_eq!(no_content.status, 204);
    assert_eq!(no_content.head.get("x-n"), Some("0"));
    let not_modified = exchange(
        &mut conn,
        &raw_http::get("/r/b", "If-None-Match: \"v1\"\r\n"),
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.head.get("etag"), Some("\"v1\""));
    let third = exchange(&mut conn, &raw_http::get("/r/c", "")).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.body_str(), "third");
    env.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_its_idle_connection_does_not_fail_the_next_request() {
    // Every answer says keep-alive (a length, no `Connection: close`), and
    // the socket is closed right after it.
    let upstream = RawUpstream::start(|_, n| Answer::close(ok(&format!("answer {n}")))).await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let first = exchange(&mut conn, &raw_http::get("/r/one", "")).await;
    assert_eq!((first.status, first.body_str().as_str()), (200, "answer 0"));
    // Let the proxy's side of the closed connection see the FIN.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = exchange(&mut conn, &raw_http::get("/r/two", "")).await;
    assert_eq!(
        (second.status, second.body_str().as_str()),
        (200, "answer 1"),
        "{:?}",
        second.head
    );
    let seen = upstream.received();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].conn, seen[1].conn);
    env.shutdown().await;
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn request_bodies_by_length_and_chunked_reach_the_upstream_exactly() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let body = "x=1&y=two&z=\u{e9}";
    let post = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = exchange(&mut conn, post.as_bytes()).await;
    assert_eq!(up.status, 200, "{}", up.body_str());
    assert_eq!(up.json()["bytes"], body.len());
    assert_eq!(up.json()["sha256"], sha_hex(body.as_bytes()));

    let get = exchange(&mut conn, &raw_http::get("/orgs/yanqianyu/after-post", "")).await;
    assert_eq!(get.status, 200);
    assert_eq!(echoed_path(&get), "/orgs/yanqianyu/after-post");

    let chunked = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let up = exchange(&mut conn, chunked).await;
    assert_eq!(up.status, 200, "{}", up.body_str());
    assert_eq!(up.json()["bytes"], 11);
    assert_eq!(up.json()["sha256"], sha_hex(b"hello world"));

    let get = exchange(
        &mut conn,
        &raw_http::get("/orgs/yanqianyu/after-chunked", ""),
    )
    .await;
    assert_eq!(echoed_path(&get), "/orgs/yanqianyu/after-chunked");
    env.shutdown().await;
}

#[tokio::test]
async fn a_malformed_head_gets_400_and_the_proxy_goes_on() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(
        &mut conn,
        b"GET /orgs/yanqianyu/x HTTP/1.1\r\nHost: localhost\r\nbad header line\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.head.get("connection"), Some("close"));
    conn.expect_eof().await;
    assert!(
        env.fake.api_requests().is_empty(),
        "nothing reached the platform"
    );

    let mut conn = raw_http::connect(env.addr).await;
    let ok = exchange(&mut conn, &raw_http::get("/orgs/yanqianyu/fine", "")).await;
    assert_eq!(ok.status, 200);
    env.shutdown().await;
}

/// A GET whose head is about `size` bytes, padded with one long header.
fn head_of(size: usize) -> Vec<u8> {
    raw_http::get(
        "/orgs/yanqianyu/big",
        &format!("X-Pad: {}\r\n", "p".repeat(size)),
    )
}

#[tokio::test]
async fn heads_over_the_limit_get_431() {
    let upstream = RawUpstream::start(|_, _| Answer::keep(ok("fine"))).await;
    let env = raw_env_with(&upstream, "limits: { max_header_bytes: 4KiB }").await;
    // Under hyper's smallest read buffer (8 KiB) and over the limit: the
    // limit is exact.
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &head_of(5 * 1024)).await;
    assert_eq!(resp.status, 431, "{}", resp.body_str());
    // Far over any buffer.
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &head_of(64 * 1024)).await;
    assert_eq!(resp.status, 431, "{}", resp.body_str());
    // Just under the limit passes.
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(
        &mut conn,
        &raw_http::get("/r/ok", &format!("X-Pad: {}\r\n", "p".repeat(3 * 1024))),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        upstream.received().len(),
        1,
        "only the head under the limit went up"
    );
    env.shutdown().await;
}

/// The value of an unlabelled gauge in `/_proxy/metrics`.
async fn gauge(env: &TestEnv, name: &str) -> f64 {
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &raw_http::get("/_proxy/metrics", "")).await;
    assert_eq!(resp.status, 200);
    resp.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test]
async fn a_caller_hanging_up_on_a_slow_upstream_leaves_the_proxy_healthy() {
    let upstream = RawUpstream::start(|req, _| {
        if req.target().starts_with("/r/slow") {
            Answer {
                delay: Duration::from_secs(3),
                ..Answer::keep(ok("too late"))
            }
        } else {
            Answer::keep(ok("fast"))
        }
    })
    .await;
    let env = raw_env(&upstream).await;
    let in_flight = "atomgit_proxy_in_flight_requests";
    let baseline = gauge(&env, in_flight).await;

    let mut conn = raw_http::connect(env.addr).await;
    conn.write(&raw_http::get("/r/slow", "")).await;
    bounded(5, "the slow request reaching the upstream", async {
        while upstream.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(gauge(&env, in_flight).await, baseline + 1.0);
    let slow_conn = upstream.received()[0].conn;
    drop(conn);

    // The request's bookkeeping ends with the caller, not with the upstream.
    bounded(2, "the in-flight gauge coming back down", async {
        while gauge(&env, in_flight).await != baseline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // And the upstream request is abandoned: its connection is closed.
    bounded(2, "the upstream connection being dropped", async {
        while !upstream.closed(slow_conn) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &raw_http::get("/r/fast", "")).await;
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "fast"));
    // Counted as nginx's 499, "client closed request".
    let mut conn = raw_http::connect(env.addr).await;
    let metrics = exchange(&mut conn, &raw_http::get("/_proxy/metrics", "")).await;
    assert!(
        metrics
            .body_str()
            .contains(r#"atomgit_proxy_requests_total{route="raw",status="499",error=""} 1"#),
        "{}",
        metrics.body_str()
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_one_mib_download_arrives_intact() {
    const N: usize = 1024 * 1024;
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &raw_http::get(&format!("/download/{N}"), "")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), N);
    // The fake's download is byte `i` = `i % 251`.
    let expected: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    assert_eq!(sha_hex(&resp.body), sha_hex(&expected));
    // Still usable afterwards.
    let next = exchange(&mut conn, &raw_http::get("/orgs/yanqianyu/after", "")).await;
    assert_eq!(echoed_path(&next), "/orgs/yanqianyu/after");
    env.shutdown().await;
}

#[tokio::test]
async fn the_absolute_form_is_served_like_the_origin_form() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let req = format!(
        "GET http://{0}/orgs/yanqianyu/abs?q=1 HTTP/1.1\r\nHost: {0}\r\n\r\n",
        env.addr
    );
    let resp = exchange(&mut conn, req.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(echoed_path(&resp), "/orgs/yanqianyu/abs");
    assert_eq!(resp.json()["query"], "q=1");
    env.shutdown().await;
}

#[tokio::test]
async fn many_and_repeated_upstream_headers_all_arrive() {
    let upstream = RawUpstream::start(|_, _| {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..40 {
            head.push_str(&format!("x-many-{i}: value-{i}\r\n"));
        }
        head.push_str("set-cookie: a=1; Path=/\r\nset-cookie: b=2; Path=/\r\n");
        head.push_str("x-dup: one\r\nx-dup: two\r\n");
        head.push_str("content-length: 4\r\n\r\nbody");
        Answer::keep(head)
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &raw_http::get("/r/headers", "")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "body");
    for i in 0..40 {
        assert_eq!(
            resp.head.get(&format!("x-many-{i}")),
            Some(format!("value-{i}").as_str())
        );
    }
    assert_eq!(resp.head.all("x-dup"), ["one", "two"]);
    assert_eq!(resp.head.all("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    env.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_right_after_each_answer_never_fails_a_request() {
    // No pause: the next request may find the pooled connection before
    // its FIN has been read. Nothing of a body-less GET is lost by trying
    // again on a fresh connection.
    let upstream = RawUpstream::start(|_, n| Answer::close(ok(&format!("answer {n}")))).await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    for i in 0..10 {
        let resp = exchange(&mut conn, &raw_http::get(&format!("/r/{i}"), "")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_str());
        assert!(resp.body_str().starts_with("answer "));
    }
    let seen = upstream.received();
    assert_eq!(seen.len(), 10, "every request went up exactly once");
    env.shutdown().await;
}

#[tokio::test]
async fn http10_with_keep_alive_stays_open() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    for name in ["one", "two"] {
        let req = format!(
            "GET /orgs/yanqianyu/{name} HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
        );
        let resp = exchange(&mut conn, req.as_bytes()).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.version, "HTTP/1.0");
        assert_eq!(
            resp.head.get("connection").map(str::to_ascii_lowercase),
            Some("keep-alive".to_owned())
        );
        assert!(resp.head.get("content-length").is_some(), "{:?}", resp.head);
        assert_eq!(echoed_path(&resp), format!("/orgs/yanqianyu/{name}"));
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_get_pipelined_behind_a_post_body_is_answered_after_it() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    // GET, POST with its body, GET, POST chunked, GET: all in one write.
    let mut all = raw_http::get("/orgs/yanqianyu/p1", "");
    all.extend(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello");
    all.extend(raw_http::get("/orgs/yanqianyu/p2", ""));
    all.extend(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    all.extend(raw_http::get("/orgs/yanqianyu/p3", ""));
    conn.write(&all).await;
    let r = conn.read_response(false).await;
    assert_eq!(echoed_path(&r), "/orgs/yanqianyu/p1");
    let r = conn.read_response(false).await;
    assert_eq!(r.json()["sha256"], sha_hex(b"hello"));
    let r = conn.read_response(false).await;
    assert_eq!(echoed_path(&r), "/orgs/yanqianyu/p2");
    let r = conn.read_response(false).await;
    assert_eq!(r.json()["sha256"], sha_hex(b"abc"));
    let r = conn.read_response(false).await;
    assert_eq!(echoed_path(&r), "/orgs/yanqianyu/p3");
    env.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_100_then_the_answer() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let head = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let cont = exchange(&mut conn, head).await;
    assert_eq!(cont.status, 100);
    let resp = exchange(&mut conn, b"hello").await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.json()["sha256"], sha_hex(b"hello"));
    let next = exchange(&mut conn, &raw_http::get("/orgs/yanqianyu/after", "")).await;
    assert_eq!(echoed_path(&next), "/orgs/yanqianyu/after");
    env.shutdown().await;
}

#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_the_connection_closed() {
    // Both framings on one request is how requests are smuggled: the body
    // is read as chunked (RFC 9112 6.3) and the connection not reused.
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let req = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let resp = exchange(&mut conn, req).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.json()["sha256"], sha_hex(b"hello"));
    assert_eq!(resp.head.get("connection"), Some("close"));
    conn.expect_eof().await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_bad_chunked_request_body_is_the_callers_400() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let req = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let resp = exchange(&mut conn, req).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.head.get("x-atomgit-proxy-error"), Some("bad_request"));
    assert_eq!(resp.json()["error"], "bad_request");
    env.shutdown().await;
}

#[tokio::test]
async fn an_http11_request_without_host_is_served_today() {
    // RFC 9112 3.2 says 400; today the proxy (hyper) serves it, as the
    // route is chosen by path and the Host check passes a missing Host.
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, b"GET /orgs/yanqianyu/nohost HTTP/1.1\r\n\r\n").await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(echoed_path(&resp), "/orgs/yanqianyu/nohost");
    env.shutdown().await;
}

#[tokio::test]
async fn requests_arriving_a_few_bytes_at_a_time_are_served() {
    let env = fake_env().await;
    let mut conn = raw_http::connect(env.addr).await;
    conn.write_slowly(
        &raw_http::get("/orgs/yanqianyu/slowly", "Accept: */*\r\n"),
        3,
    )
    .await;
    let resp = conn.read_response(false).await;
    assert_eq!(echoed_path(&resp), "/orgs/yanqianyu/slowly");
    // A body split across reads too, and the head's end split at "\r\n|\r\n".
    let mut post =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\n".to_vec();
    let split = post.len() - 2;
    post.extend(b"hello world");
    conn.write(&post[..split]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.write_slowly(&post[split..], 4).await;
    let resp = conn.read_response(false).await;
    assert_eq!(resp.json()["sha256"], sha_hex(b"hello world"));
    env.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let env = fake_env().await;
    let h2 = common::h2_client();
    let req = common::request(
        http::Method::GET,
        &env.url("/orgs/yanqianyu/h2"),
        &[],
        common::full(""),
    );
    let resp = bounded(5, "an h2c request", h2.request(req))
        .await
        .expect("an h2c answer");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = env.last_api_request("/orgs/yanqianyu/h2");
    single_bearer(&seen.headers);
    env.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_that_are_not_persistent_are_not_reused() {
    // An HTTP/1.0 answer without keep-alive, and an HTTP/1.1 answer with
    // `Connection: close`, both with a length and the socket left open: the
    // proxy must close them itself and use a new connection next time.
    let upstream = RawUpstream::start(|_, n| match n {
        0 => Answer::keep("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\none"),
        1 => Answer::keep("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\ntwo"),
        _ => Answer::keep(ok("three")),
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    for expected in ["one", "two", "three"] {
        let resp = exchange(&mut conn, &raw_http::get("/r/x", "")).await;
        assert_eq!((resp.status, resp.body_str().as_str()), (200, expected));
        // Not asserted for "one": today the upstream's HTTP/1.0 shows in the
        // caller's status line (hyper writes the response's version).
        if expected != "one" {
            assert_eq!(resp.version, "HTTP/1.1");
        }
    }
    let seen = upstream.received();
    assert_ne!(seen[0].conn, seen[1].conn, "HTTP/1.0 connection reused");
    assert_ne!(
        seen[1].conn, seen[2].conn,
        "`Connection: close` connection reused"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn the_target_goes_up_byte_exact_and_hop_by_hop_headers_stop_at_the_proxy() {
    let upstream = RawUpstream::start(|_, _| {
        Answer::keep(
            "HTTP/1.1 200 OK\r\nConnection: x-up-hop\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nX-Up-Custom: v\r\nContent-Length: 2\r\n\r\nok",
        )
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let req = b"GET /r/a%20b/%7Ec?x=%2F&y=1&z HTTP/1.1\r\nHost: localhost\r\n\
                Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                Proxy-Authorization: Basic eA==\r\nX-Custom: v\r\nX-Custom: w\r\nCookie: a=b\r\n\
                Authorization: Bearer caller\r\nUser-Agent: raw\r\nAccept-Encoding: gzip\r\n\r\n";
    let resp = exchange(&mut conn, req).await;
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "ok"));
    for gone in ["connection", "x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(
            resp.head.get(gone).is_none(),
            "{gone} reached the caller: {:?}",
            resp.head
        );
    }
    assert_eq!(resp.head.get("x-up-custom"), Some("v"));

    let seen = &upstream.received()[0];
    assert_eq!(seen.head.line, "GET /r/a%20b/%7Ec?x=%2F&y=1&z HTTP/1.1");
    let upstream_authority = upstream.addr.to_string();
    assert_eq!(seen.head.all("host"), [upstream_authority.as_str()]);
    assert_eq!(
        seen.head.all("authorization"),
        [format!("Bearer {}", raw_http::RAW_TOKEN)]
    );
    assert_eq!(seen.head.all("x-custom"), ["v", "w"]);
    assert_eq!(seen.head.get("user-agent"), Some("raw"));
    assert_eq!(seen.head.get("accept-encoding"), Some("gzip"));
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "cookie",
    ] {
        assert!(
            seen.head.get(gone).is_none(),
            "{gone} went upstream: {:?}",
            seen.head
        );
    }
    env.shutdown().await;
}

/// A chunked answer of `total` bytes in chunks of uneven sizes, and the
/// bytes it carries.
fn uneven_chunked(total: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 253) as u8).collect();
    let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let (mut at, mut size) = (0, 1);
    while at < total {
        let n = size.min(total - at);
        wire.extend(format!("{n:x}\r\n").as_bytes());
        wire.extend(&data[at..at + n]);
        wire.extend(b"\r\n");
        at += n;
        size = size * 3 % 8191 + 1;
    }
    wire.extend(b"0\r\n\r\n");
    (wire, data)
}

#[tokio::test]
async fn large_and_trickled_upstream_answers_arrive_intact() {
    const TOTAL: usize = 256 * 1024;
    let (chunked, data) = uneven_chunked(TOTAL);
    let close_delimited = [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n".as_slice(),
        &data,
    ]
    .concat();
    let upstream = RawUpstream::start(move |_, n| match n {
        0 => Answer::keep(chunked.clone()),
        // The head and a small body a few bytes per write.
        1 => Answer {
            piece: 5,
            ..Answer::keep(ok("trickled body"))
        },
        2 => Answer {
            piece: 7,
            ..Answer::keep(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
            )
        },
        3 => Answer::close(close_delimited.clone()),
        _ => Answer::keep(ok("last")),
    })
    .await;
    let env = raw_env(&upstream).await;
    let mut conn = raw_http::connect(env.addr).await;
    let resp = exchange(&mut conn, &raw_http::get("/r/chunked", "")).await;
    assert_eq!(resp.body.len(), TOTAL);
    assert_eq!(sha_hex(&resp.body), sha_hex(&data));
    let resp = exchange(&mut conn, &raw_http::get("/r/trickled", "")).await;
    assert_eq!(resp.body_str(), "trickled body");
    let resp = exchange(&mut conn, &raw_http::get("/r/trickled-chunks", "")).await;
    assert_eq!(resp.body_str(), "wikipedia");
    let resp = exchange(&mut conn, &raw_http::get("/r/eof", "")).await;
    assert_eq!(resp.body.len(), TOTAL);
    assert_eq!(sha_hex(&resp.body), sha_hex(&data));
    let resp = exchange(&mut conn, &raw_http::get("/r/last", "")).await;
    assert_eq!(resp.body_str(), "last");
    env.shutdown().await;
}
