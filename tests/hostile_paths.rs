//! Hostile paths: a path that takes one route's credential must not be read
//! by the platform as another route's path. Every encoding of a dot segment
//! is refused with 400 before anything reaches the platform; an encoded
//! slash that hides no dot segment goes upstream byte for byte.

mod common;

use common::{TestEnv, bounded};
use http::StatusCode;

/// `/orgs/yanqianyu` acts as installation 14, other orgs as 18, repos as
/// their owner's installation.
const ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: other-orgs
  match: { path_prefix: /orgs }
  installation: { id: 18 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
";

const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu"), (18, "hanshuorg2")];

/// Each climbs out of `/orgs/yanqianyu` into `/orgs/hanshuorg2` for a
/// platform that decodes before it normalises.
const CLIMBS: &[&str] = &[
    "..%2F",
    "..%2f",
    "%2e%2e%2f",
    "..;/",
    "..%3B/",
    "..\\",
    "..%5C",
    "%252e%252e/",
    "%c0%ae%c0%ae/",
    "%e0%80%ae%e0%80%ae/",
    "..%00/",
    "%2e%2e%00/",
];

async fn start() -> TestEnv {
    TestEnv::start(ROUTES, INSTALLATIONS).await
}

#[tokio::test]
async fn every_encoding_of_a_dot_segment_is_refused_before_the_platform() {
    bounded(60, "hostile paths", async {
        let env = start().await;
        for climb in CLIMBS {
            let path = format!("/orgs/yanqianyu/{climb}hanshuorg2/repos");
            env.get(&path)
                .await
                .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
            // A dot segment at the end, where a platform trims the rest.
            let path = format!("/orgs/yanqianyu/x/{climb}");
            env.get(&path)
                .await
                .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        }
        assert!(
            env.fake.requests().is_empty(),
            "the platform received {:?}",
            env.fake.requests()
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn the_refusal_names_the_rule_not_the_path() {
    bounded(60, "refusal message", async {
        let env = start().await;
        let reply = env.get("/orgs/yanqianyu/..%2Fsecret-marker").await;
        reply.assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(!reply.text().contains("secret-marker"), "{}", reply.text());
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_spelling_that_reads_as_another_route_is_refused() {
    bounded(60, "ambiguous paths", async {
        let env = start().await;
        // As written these take `other-orgs` (installation 18); decoded they
        // are yanqianyu's path.
        for path in [
            "/orgs/%79anqianyu/repos",
            "/orgs//yanqianyu/repos",
            "/orgs/yanqianyu;x/repos",
            "/orgs/yanqianyu%2Frepos",
            "/orgs/yanqianyu\\repos",
        ] {
            env.get(path)
                .await
                .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        }
        // An owner that decodes to something no platform reads as an owner.
        for path in ["/repos/yanqianyu%3Bx/demo", "/repos/%2579anqianyu/demo"] {
            env.get(path)
                .await
                .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
        }
        assert!(
            env.fake.api_requests().is_empty(),
            "the platform received {:?}",
            env.fake.api_requests()
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn an_encoded_slash_without_a_dot_segment_goes_upstream_byte_for_byte() {
    bounded(60, "encoded slash", async {
        let env = start().await;
        for path in [
            "/repos/yanqianyu/demo/branches/feature%2Fx",
            "/repos/yanqianyu/demo/git/refs/heads/feature%2fx",
            "/repos/yanqianyu/demo/contents/.github/workflows",
            "/repos/yanqianyu/demo/contents/a%20b...md",
            "/orgs/yanqianyu/.well-known",
        ] {
            let reply = env.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            assert_eq!(reply.json()["path"], path);
            let recorded = env.last_api_request(path);
            assert_eq!(recorded.path, path);
            assert_eq!(recorded.query, None);
        }
        assert_eq!(
            env.owner_of_last("/repos/yanqianyu/demo/branches/feature%2Fx"),
            atomgit_fake::TokenOwner::Installation(14)
        );
        // The query is not the path: dots there are the caller's business.
        let reply = env.get("/orgs/hanshuorg2/search?q=../..%2F").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let recorded = env.last_api_request("/orgs/hanshuorg2/search");
        assert_eq!(recorded.query.as_deref(), Some("q=../..%2F"));
        env.shutdown().await;
    })
    .await
}
