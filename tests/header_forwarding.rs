//! What the upstream receives: exactly one `Authorization` header carrying
//! the token it issued for the route's installation, no hop-by-hop headers,
//! its own `Host`, and the caller's query string byte for byte.

mod common;

use atomgit_fake::{Recorded, TokenOwner};
use common::{EnvOptions, TestEnv, bounded, single_bearer};
use http::{Method, StatusCode};

const ROUTES: &str = common::YANQIANYU_ROUTE;

/// Every header value the fake recorded, as text.
fn all_header_text(r: &Recorded) -> String {
    r.headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

#[tokio::test]
async fn injected_token_replaces_the_callers_authorization() {
    bounded(60, "authorization replaced", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;

        let plain = env.get("/orgs/yanqianyu/a").await;
        assert_eq!(plain.status, StatusCode::OK, "{}", plain.text());
        let first = single_bearer(&env.last_api_request("/orgs/yanqianyu/a").headers);
        assert_eq!(
            env.fake.token_owner(&first),
            Some(TokenOwner::Installation(14))
        );

        // One and two caller Authorization headers: both replaced, not appended.
        let one = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/b",
                &[("authorization", "Bearer caller-secret")],
                "",
            )
            .await;
        assert_eq!(one.status, StatusCode::OK, "{}", one.text());
        let two = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/c",
                &[
                    ("authorization", "Bearer caller-secret"),
                    ("authorization", "token caller-secret-2"),
                ],
                "",
            )
            .await;
        assert_eq!(two.status, StatusCode::OK, "{}", two.text());
        for path in ["/orgs/yanqianyu/b", "/orgs/yanqianyu/c"] {
            let seen = env.last_api_request(path);
            let token = single_bearer(&seen.headers);
            assert_eq!(token, first, "the cached token is reused");
            assert!(
                !all_header_text(&seen).contains("caller-secret"),
                "the caller's credential reached the upstream: {seen:?}"
            );
        }
        assert_eq!(env.fake.mints_for(14), 1);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn connection_header_cannot_remove_the_token_and_hop_by_hop_headers_stay_behind() {
    bounded(60, "hop-by-hop", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;

        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/hop",
                &[
                    ("connection", "authorization, x-foo"),
                    ("authorization", "Bearer caller-secret"),
                    ("x-foo", "listed-in-connection"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("upgrade", "websocket"),
                    ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
                    ("proxy-connection", "keep-alive"),
                    ("x-kept", "end-to-end"),
                ],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

        let seen = env.last_api_request("/orgs/yanqianyu/hop");
        let token = single_bearer(&seen.headers);
        assert_eq!(
            env.fake.token_owner(&token),
            Some(TokenOwner::Installation(14))
        );
        for name in [
            "connection",
            "x-foo",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(
                !seen.headers.contains_key(name),
                "hop-by-hop `{name}` reached the upstream: {:?}",
                seen.headers
            );
        }
        assert_eq!(seen.headers["x-kept"], "end-to-end");
        let text = all_header_text(&seen);
        assert!(!text.contains("caller-secret"), "{text}");
        assert!(!text.contains("cHJveHk6c2VjcmV0"), "{text}");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn host_is_the_upstreams_and_the_query_is_forwarded_byte_for_byte() {
    bounded(60, "host and query", async {
        // Without clients, a name is served only when the config knows it.
        let env = TestEnv::start_with(EnvOptions {
            routes: ROUTES,
            installations: &[(14, "yanqianyu")],
            extra_yaml: "allowed_hosts: [caller.example]",
            ..EnvOptions::default()
        })
        .await;

        let query = "a=1&b=%2F%20x&a=2&c=&d=%E4%B8%AD&e=a+b";
        let reply = env
            .request(
                Method::GET,
                &format!("/orgs/yanqianyu/q?{query}"),
                &[("host", "caller.example:1234")],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["query"], query);

        let seen = env.last_api_request("/orgs/yanqianyu/q");
        assert_eq!(seen.query.as_deref(), Some(query));
        let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!(hosts[0], env.fake.addr().to_string().as_str());
        env.shutdown().await;
    })
    .await
}
