//! The conditional cache: a stored answer is only ever sent after the
//! platform confirmed it (304), per credential; identical GETs in flight at
//! once share one upstream request. The fake serves `.../etag/{name}` with
//! stable validators.

mod common;

use common::{EnvOptions, Reply, TestEnv, YANQIANYU_ROUTE, bounded};
use http::{Method, StatusCode};
use std::collections::HashSet;

const DOC: &str = "/orgs/yanqianyu/etag/doc";

async fn env(extra: &str, routes: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes,
        installations: &[(14, "yanqianyu"), (18, "hanshuorg2")],
        extra_yaml: extra,
        ..EnvOptions::default()
    })
    .await
}

fn if_none_match_sent(env: &TestEnv, path: &str) -> Option<String> {
    env.last_api_request(path)
        .headers
        .get("if-none-match")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
}

async fn get_with(env: &TestEnv, path: &str, headers: &[(&str, &str)]) -> Reply {
    env.request(Method::GET, path, headers, bytes::Bytes::new())
        .await
}

#[tokio::test]
async fn a_second_get_is_revalidated_and_a_change_is_seen() {
    bounded(30, "revalidation", async {
        let env = env("", YANQIANYU_ROUTE).await;
        let first = env.get(DOC).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        assert_eq!(first.header("x-atomgit-proxy-cache"), Some("miss"));
        assert_eq!(if_none_match_sent(&env, DOC), None);

        let second = env.get(DOC).await;
        assert_eq!(
            if_none_match_sent(&env, DOC).as_deref(),
            Some("\"doc-v1\""),
            "the proxy asked conditionally"
        );
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.header("x-atomgit-proxy-cache"), Some("revalidated"));
        assert_eq!(second.body, first.body);
        assert_eq!(second.header("etag"), Some("\"doc-v1\""));
        assert_eq!(
            second.header("content-length"),
            Some(first.body.len().to_string().as_str())
        );
        assert_eq!(
            env.fake.requests_to(DOC),
            2,
            "nothing served without asking"
        );

        env.fake.set_resource("doc", "changed");
        let third = env.get(DOC).await;
        assert_eq!(third.status, StatusCode::OK);
        assert_eq!(third.header("x-atomgit-proxy-cache"), Some("miss"));
        assert_eq!(third.json()["content"], "changed");
        let fourth = env.get(DOC).await;
        assert_eq!(fourth.header("x-atomgit-proxy-cache"), Some("revalidated"));
        assert_eq!(fourth.json()["content"], "changed");

        let metrics = env.get("/_proxy/metrics").await.text();
        for line in [
            r#"atomgit_proxy_cache_total{result="miss"} 2"#,
            r#"atomgit_proxy_cache_total{result="hit"} 3"#,
            r#"atomgit_proxy_cache_total{result="revalidated"} 2"#,
        ] {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_callers_own_conditional_gets_the_platforms_304() {
    bounded(30, "caller's conditionals", async {
        let env = env("", YANQIANYU_ROUTE).await;
        assert_eq!(env.get(DOC).await.status, StatusCode::OK);
        let reply = get_with(&env, DOC, &[("if-none-match", "\"doc-v1\"")]).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        assert!(reply.body.is_empty());
        assert_eq!(if_none_match_sent(&env, DOC).as_deref(), Some("\"doc-v1\""));
        assert_eq!(reply.header("x-atomgit-proxy-cache"), None);
        // A stale validator of the caller's own passes untouched too.
        let reply = get_with(&env, DOC, &[("if-none-match", "\"other\"")]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(if_none_match_sent(&env, DOC).as_deref(), Some("\"other\""));
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn no_store_and_set_cookie_answers_are_never_revalidated_from_the_cache() {
    bounded(30, "uncacheable answers", async {
        let env = env("", YANQIANYU_ROUTE).await;
        for query in ["?no_store=1", "?cookie=1"] {
            let path = format!("{DOC}{query}");
            assert_eq!(env.get(&path).await.status, StatusCode::OK);
            let second = env.get(&path).await;
            assert_eq!(second.status, StatusCode::OK);
            assert_ne!(second.header("x-atomgit-proxy-cache"), Some("revalidated"));
            assert_eq!(if_none_match_sent(&env, DOC), None, "{query}");
        }
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn one_credential_never_sees_anothers_cached_body() {
    bounded(30, "per-credential cache", async {
        // The same upstream path through two installations.
        let routes = "
        - name: a
          match: { path_prefix: /a }
          strip_prefix: true
          installation: { id: 14 }
        - name: b
          match: { path_prefix: /b }
          strip_prefix: true
          installation: { id: 18 }
        ";
        let env = env("", routes).await;
        let a = env.get("/a/etag/shared").await;
        assert_eq!(a.json()["owner"], "installation:14");
        assert_eq!(
            env.get("/a/etag/shared")
                .await
                .header("x-atomgit-proxy-cache"),
            Some("revalidated")
        );
        let b = env.get("/b/etag/shared").await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.json()["owner"], "installation:18", "b's own answer");
        assert_eq!(b.header("x-atomgit-proxy-cache"), Some("miss"));
        assert_eq!(if_none_match_sent(&env, "/etag/shared"), None);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn max_bytes_0_turns_the_cache_off() {
    bounded(30, "cache off", async {
        let env = env("cache: { max_bytes: 0 }", YANQIANYU_ROUTE).await;
        assert_eq!(env.get(DOC).await.status, StatusCode::OK);
        let second = env.get(DOC).await;
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.header("x-atomgit-proxy-cache"), None);
        assert_eq!(if_none_match_sent(&env, DOC), None);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_answer_over_max_entry_bytes_streams_whole_but_is_not_kept() {
    bounded(30, "large answers", async {
        let env = env("cache: { max_entry_bytes: 1KiB }", YANQIANYU_ROUTE).await;
        let path = format!("{DOC}?bytes=70000");
        let first = env.get(&path).await;
        assert_eq!(first.body.len(), 70000);
        let second = env.get(&path).await;
        assert_eq!(second.body.len(), 70000);
        assert_eq!(if_none_match_sent(&env, DOC), None);
        // Small ones still are.
        assert_eq!(env.get(DOC).await.status, StatusCode::OK);
        assert_eq!(
            env.get(DOC).await.header("x-atomgit-proxy-cache"),
            Some("revalidated")
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn twenty_identical_concurrent_gets_share_one_upstream_request() {
    bounded(30, "shared in-flight GETs", async {
        let env = env("", YANQIANYU_ROUTE).await;
        // A warm token, so the twenty do not line up behind the mint.
        assert_eq!(env.get("/orgs/yanqianyu/warm").await.status, StatusCode::OK);
        let path = format!("{DOC}?slow_ms=500");
        let replies = futures_util::future::join_all((0..20).map(|_| env.get(&path))).await;
        assert_eq!(env.fake.requests_to(DOC), 1, "one upstream request");
        let bodies: HashSet<&[u8]> = replies.iter().map(|r| &r.body[..]).collect();
        assert_eq!(bodies.len(), 1, "identical answers");
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("etag"), Some("\"doc-v1\""));
        }
        let shared = replies
            .iter()
            .filter(|r| r.header("x-atomgit-proxy-cache") == Some("shared"))
            .count();
        assert_eq!(shared, 19);
        let metrics = env.get("/_proxy/metrics").await.text();
        assert!(
            metrics.contains(r#"atomgit_proxy_cache_total{result="shared"} 19"#),
            "{metrics}"
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn uncacheable_answers_are_not_shared() {
    bounded(30, "no sharing of no-store", async {
        let env = env("", YANQIANYU_ROUTE).await;
        assert_eq!(env.get("/orgs/yanqianyu/warm").await.status, StatusCode::OK);
        let path = format!("{DOC}?slow_ms=300&no_store=1");
        let replies = futures_util::future::join_all((0..5).map(|_| env.get(&path))).await;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK);
            assert_ne!(r.header("x-atomgit-proxy-cache"), Some("shared"));
        }
        assert_eq!(env.fake.requests_to(DOC), 5);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_cacheable_answer_streams_to_the_caller_while_it_is_copied() {
    bounded(30, "streaming while copying", async {
        use http_body_util::BodyExt;
        let env = env("", YANQIANYU_ROUTE).await;
        let path = format!("{DOC}?gate=1");
        let req = common::request(Method::GET, &env.url(&path), &[], common::full(""));
        let resp = env.client.request(req).await.expect("response headers");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-atomgit-proxy-cache"], "miss");
        let mut body = resp.into_body();
        // The platform has sent only the first half: it must already be here.
        let first = body
            .frame()
            .await
            .expect("a first frame")
            .expect("no error")
            .into_data()
            .expect("data");
        assert!(!first.is_empty());
        env.fake.open_gate(1);
        let rest = body.collect().await.expect("the rest").to_bytes();
        let whole = [first, rest].concat();
        let doc: serde_json::Value = serde_json::from_slice(&whole).expect("whole JSON");
        assert_eq!(doc["name"], "doc");

        // The copy was kept: the next GET is revalidated with the same bytes.
        let again = env.get(&path).await;
        assert_eq!(again.header("x-atomgit-proxy-cache"), Some("revalidated"));
        assert_eq!(&again.body[..], &whole[..]);
        env.shutdown().await;
    })
    .await;
}
