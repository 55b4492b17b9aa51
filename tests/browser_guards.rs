//! What a web page (or a rebound DNS name, or a method trick) must not make
//! the proxy do: cross-site requests and foreign `Host`s are refused before
//! any credential is touched, `TRACE`/`CONNECT` are refused, method-override
//! headers must satisfy a route's `methods`, cookies stay local, and a body
//! the caller broke is the caller's fault. The requests carry the headers a
//! browser would send; some are written byte by byte on a raw connection.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = "
- name: reads
  match: { path_prefix: /orgs/yanqianyu/reads, methods: [GET] }
  installation: { id: 14 }
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 15 }
- name: get-only
  match: { path_prefix: /only-get, methods: [GET] }
  installation: { id: 14 }
- name: upload
  match: { path_prefix: /upload }
  installation: { id: 14 }
- name: tools
  match: { path_prefix: /hosted, host: tools.local }
  installation: { id: 14 }
";

const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu"), (15, "yanqianyu")];

const KEY: &str = "ci-key-0123456789abcdef";

async fn env_with(extra_yaml: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes: ROUTES,
        installations: INSTALLATIONS,
        extra_yaml,
        ..EnvOptions::default()
    })
    .await
}

/// Asserts the platform saw nothing: no API request and no token minted.
fn assert_untouched(env: &TestEnv) {
    assert_eq!(
        env.fake.api_requests().len(),
        0,
        "the fake got API requests"
    );
    assert_eq!(env.fake.mint_count(), 0, "a token was minted");
}

#[tokio::test]
async fn a_page_on_another_origin_is_refused_before_any_credential() {
    bounded(60, "cross-site", async {
        let env = env_with("").await;
        for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
            env.request(
                Method::POST,
                "/orgs/yanqianyu/repos",
                &[
                    ("origin", origin),
                    ("sec-fetch-site", "cross-site"),
                    ("content-type", "text/plain"),
                ],
                r#"{"name":"pwned"}"#,
            )
            .await
            .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
        // A simple GET (no-cors: no Origin) is still marked by Fetch Metadata.
        for site in ["cross-site", "same-site", "Cross-Site"] {
            env.request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[("sec-fetch-site", site), ("sec-fetch-mode", "no-cors")],
                "",
            )
            .await
            .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
        // Local endpoints too: a page must not read metrics or readiness.
        for path in ["/_proxy/healthz", "/_proxy/readyz", "/_proxy/metrics"] {
            env.request(Method::GET, path, &[("origin", "https://evil.example")], "")
                .await
                .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
        assert_untouched(&env);

        // What the user typed, or the page itself: served.
        for site in ["same-origin", "none"] {
            let reply = env
                .request(
                    Method::GET,
                    "/orgs/yanqianyu/repos",
                    &[("sec-fetch-site", site)],
                    "",
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{site}: {}", reply.text());
        }
        assert_eq!(env.fake.api_requests().len(), 2);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn with_clients_origin_is_checked_before_the_key_and_host_is_not() {
    bounded(60, "guards with clients", async {
        let env = env_with(&format!(
            "clients:\n  - name: ci\n    key: {{ value: \"{KEY}\" }}\n"
        ))
        .await;
        let bearer = format!("Bearer {KEY}");
        for auth in [None, Some(bearer.as_str())] {
            let mut headers = vec![("origin", "https://evil.example")];
            headers.extend(auth.map(|a| ("authorization", a)));
            env.request(Method::GET, "/orgs/yanqianyu/repos", &headers, "")
                .await
                .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
        assert_untouched(&env);
        // A caller with a key is no web page: any name it uses is served.
        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[
                    ("host", "rebind.attacker.example:8080"),
                    ("authorization", &bearer),
                ],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_listed_origin_is_served() {
    bounded(60, "allowed origin", async {
        let env = env_with("allowed_origins: [\"https://tools.example.com\"]\n").await;
        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[
                    ("origin", "https://Tools.Example.com"),
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "cors"),
                ],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        for origin in ["https://tools.example.com:8443", "http://tools.example.com"] {
            env.request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[("origin", origin)],
                "",
            )
            .await
            .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_origin");
        }
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_rebound_host_is_refused_without_clients() {
    bounded(60, "DNS rebinding", async {
        let env = env_with("allowed_hosts: [Proxy.Internal]\n").await;
        // The page's own name, now resolving to 127.0.0.1; everything else
        // about the request is same-origin.
        for host in [
            "rebind.attacker.example:8080",
            "rebind.attacker.example",
            "localhost.attacker.example",
            "evil.localhost",
        ] {
            env.request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[("host", host), ("sec-fetch-site", "same-origin")],
                "",
            )
            .await
            .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_host");
        }
        env.request(
            Method::GET,
            "/_proxy/readyz",
            &[("host", "rebind.attacker.example")],
            "",
        )
        .await
        .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_host");
        assert_untouched(&env);

        let port = env.addr.port();
        let served = [
            format!("localhost:{port}"),
            "LOCALHOST.".to_owned(),
            "127.0.0.1".to_owned(),
            format!("127.9.8.7:{port}"),
            format!("[::1]:{port}"),
            "proxy.internal:8443".to_owned(),
        ];
        for host in &served {
            let reply = env
                .request(Method::GET, "/orgs/yanqianyu/repos", &[("host", host)], "")
                .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "Host {host}: {}",
                reply.text()
            );
        }
        // A route's match.host is served, and still selects its route.
        let reply = env
            .request(Method::GET, "/hosted/x", &[("host", "Tools.Local:1")], "")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

        // The OAuth pair is reached by the platform's redirect, by whatever
        // name the operator registered: exempt from both checks.
        for path in ["/_proxy/oauth/login?user=alice", "/_proxy/oauth/callback"] {
            let reply = env
                .request(
                    Method::GET,
                    path,
                    &[
                        ("host", "proxy.example.net"),
                        ("origin", "https://atomgit.com"),
                        ("sec-fetch-site", "cross-site"),
                    ],
                    "",
                )
                .await;
            // No `oauth:` here: the login page says so, which shows the
            // request got past the guards.
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
            assert!(
                reply.text().contains("Login is not set up"),
                "{}",
                reply.text()
            );
        }
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_host_with_userinfo_is_a_bad_request() {
    bounded(60, "userinfo", async {
        let env = env_with("").await;
        for host in ["user@127.0.0.1", "evil.example@127.0.0.1:1", "a b"] {
            env.request(Method::GET, "/orgs/yanqianyu/repos", &[("host", host)], "")
                .await
                .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        }
        // In an absolute-form target, which outranks Host.
        let port = env.addr.port();
        raw(
            env.addr,
            format!(
                "GET http://x@127.0.0.1:{port}/orgs/yanqianyu/repos HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            false,
        )
        .await
        .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        assert_untouched(&env);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn trace_and_connect_are_not_allowed() {
    bounded(60, "TRACE and CONNECT", async {
        let env = env_with("").await;
        for path in ["/orgs/yanqianyu/repos", "/_proxy/healthz"] {
            env.request(Method::TRACE, path, &[], "")
                .await
                .assert_proxy_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        raw(
            env.addr,
            b"CONNECT api.atomgit.com:443 HTTP/1.1\r\nHost: api.atomgit.com:443\r\nConnection: close\r\n\r\n",
            false,
        )
        .await
        .assert_proxy_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        raw(
            env.addr,
            b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
            false,
        )
        .await
        .assert_proxy_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_untouched(&env);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn override_headers_must_be_admitted_by_the_route() {
    bounded(60, "method override", async {
        let env = env_with("").await;
        // A GET-only route with nothing after it: no route.
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            env.request(Method::GET, "/only-get/x", &[(name, "DELETE")], "")
                .await
                .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        }
        assert_untouched(&env);
        let reply = env
            .request(
                Method::GET,
                "/only-get/x",
                &[("x-http-method-override", "get")],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

        // A GET-only route followed by one for every method: the later one
        // takes the override, with its own credential.
        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/reads/x",
                &[("x-http-method-override", "delete")],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            env.owner_of_last("/orgs/yanqianyu/reads/x"),
            atomgit_fake::TokenOwner::Installation(15)
        );
        env.get("/orgs/yanqianyu/reads/x").await;
        assert_eq!(
            env.owner_of_last("/orgs/yanqianyu/reads/x"),
            atomgit_fake::TokenOwner::Installation(14)
        );

        for method in ["TRACE", "connect"] {
            env.request(
                Method::POST,
                "/orgs/yanqianyu/x",
                &[("x-http-method", method)],
                "",
            )
            .await
            .assert_proxy_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn cookies_are_not_forwarded() {
    bounded(60, "cookies", async {
        let env = env_with("").await;
        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[
                    ("cookie", "atomgit_proxy_oauth_state=s3cret; session=abc"),
                    ("cookie", "other=1"),
                    ("cookie2", "$Version=\"1\""),
                    ("accept", "application/json"),
                ],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = env.last_api_request("/orgs/yanqianyu/repos");
        assert!(!seen.headers.contains_key("cookie"), "{:?}", seen.headers);
        assert!(!seen.headers.contains_key("cookie2"), "{:?}", seen.headers);
        assert_eq!(seen.headers["accept"], "application/json");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_broken_request_body_is_the_callers_fault() {
    bounded(60, "broken bodies", async {
        let env = env_with("").await;
        // A chunk-size line that is not hex.
        raw(
            env.addr,
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nmore\r\n",
            false,
        )
        .await
        .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        // Fewer bytes than Content-Length, then the caller stops sending.
        raw(
            env.addr,
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nhello",
            true,
        )
        .await
        .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        let metrics = env.get("/_proxy/metrics").await.text();
        assert!(!metrics.contains("upstream_unreachable"), "{metrics}");
        assert!(
            metrics.contains(r#"route="upload",status="400",error="bad_request""#),
            "{metrics}"
        );
        // The same upload, well formed, still works.
        let reply = env
            .request(Method::POST, "/upload", &[], "hello")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        env.shutdown().await;
    })
    .await
}

/// Writes `request` on a fresh connection (then half-closes it when
/// `hang_up`) and reads one answer.
async fn raw(addr: SocketAddr, request: &[u8], hang_up: bool) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.write_all(request).await.expect("write the request");
    if hang_up {
        stream.shutdown().await.expect("half-close");
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded by the caller's timeout; stops once the whole answer is in.
    loop {
        let n = stream.read(&mut chunk).await.expect("read the answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(reply) = parse_answer(&buf) {
            return reply;
        }
        assert!(
            n > 0,
            "connection closed mid-answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

/// One complete HTTP/1.1 answer with a `Content-Length`, or `None` while
/// more bytes are needed.
fn parse_answer(buf: &[u8]) -> Option<Reply> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = buf.get(head_end + 4..head_end + 4 + length)?;
    Some(Reply {
        status: StatusCode::from_u16(code).ok()?,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}
