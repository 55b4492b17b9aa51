//! Local callers: every key form, 401 and 403, the key never upstream, and
//! the `/_proxy/` endpoints that need a key.

mod common;

use base64::Engine;
use common::*;
use http::{Method, StatusCode};

const CI_KEY: &str = "ci-key-0123456789abcdef";
const OPS_KEY: &str = "ops-key-0123456789abcdef";

const CLIENTS: &str = r#"
clients:
  - name: ci
    key: { value: "ci-key-0123456789abcdef" }
  - name: ops
    key: { value: "ops-key-0123456789abcdef" }
"#;

const ROUTES: &str = "
- name: ci-only
  match: { path_prefix: /orgs/yanqianyu, clients: [ci] }
  installation: { id: 14 }
- name: ops-only
  match: { path_prefix: /orgs/hanshuorg2, clients: [ops] }
  installation: { id: 18 }
- name: anyone-repos
  match: { path_prefix: /orgs/hanshuorg2/repos }
  installation: { id: 18 }
";

async fn env() -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes: ROUTES,
        installations: &[(14, "yanqianyu"), (18, "hanshuorg2")],
        extra_yaml: CLIENTS,
        ..EnvOptions::default()
    })
    .await
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn every_key_form_is_accepted_and_never_forwarded() {
    let env = env().await;
    for auth in [
        format!("Bearer {CI_KEY}"),
        format!("token {CI_KEY}"),
        basic("x-access-token", CI_KEY),
        basic("", CI_KEY),
    ] {
        let reply = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{auth}: {}", reply.text());
        let seen = env.last_api_request("/orgs/yanqianyu/repos");
        let token = single_bearer(&seen.headers);
        assert!(env.fake.token_owner(&token).is_some());
        for (name, value) in &seen.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(CI_KEY),
                "the client key reached the upstream in {name}"
            );
        }
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let env = env().await;
    env.get("/orgs/yanqianyu/repos")
        .await
        .assert_proxy_error(StatusCode::UNAUTHORIZED, "unauthorized_client");
    for auth in [
        "Bearer not-a-key-at-all-000000",
        "token ",
        "Basic !!!",
        "Digest x",
    ] {
        env.request(
            Method::GET,
            "/orgs/yanqianyu/repos",
            &[("authorization", auth)],
            "",
        )
        .await
        .assert_proxy_error(StatusCode::UNAUTHORIZED, "unauthorized_client");
    }
    assert!(
        env.fake.api_requests().is_empty(),
        "nothing reached the upstream"
    );
    assert_eq!(
        env.fake.mint_count(),
        0,
        "nothing was minted for an unknown caller"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_route_that_excludes_the_caller_is_403_unless_a_later_route_matches() {
    let env = env().await;
    let ci = format!("Bearer {CI_KEY}");
    let ops = format!("Bearer {OPS_KEY}");
    env.request(
        Method::GET,
        "/orgs/hanshuorg2/members",
        &[("authorization", &ci)],
        "",
    )
    .await
    .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_client");
    let later = env
        .request(
            Method::GET,
            "/orgs/hanshuorg2/repos",
            &[("authorization", &ci)],
            "",
        )
        .await;
    assert_eq!(later.status, StatusCode::OK, "{}", later.text());
    let allowed = env
        .request(
            Method::GET,
            "/orgs/hanshuorg2/members",
            &[("authorization", &ops)],
            "",
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK);
    env.request(
        Method::GET,
        "/orgs/yanqianyu/repos",
        &[("authorization", &ops)],
        "",
    )
    .await
    .assert_proxy_error(StatusCode::FORBIDDEN, "forbidden_client");
    env.shutdown().await;
}

#[tokio::test]
async fn local_endpoints_other_than_health_need_a_key() {
    let env = env().await;
    assert_eq!(env.get("/_proxy/healthz").await.status, StatusCode::OK);
    assert_eq!(env.get("/_proxy/readyz").await.status, StatusCode::OK);
    env.get("/_proxy/metrics")
        .await
        .assert_proxy_error(StatusCode::UNAUTHORIZED, "unauthorized_client");
    let metrics = env
        .request(
            Method::GET,
            "/_proxy/metrics",
            &[("authorization", &format!("token {OPS_KEY}"))],
            "",
        )
        .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("atomgit_proxy_requests_total"));
    // The OAuth pair is reachable without a key (a browser holds none).
    let login = env.get("/_proxy/oauth/login").await;
    assert_ne!(login.status, StatusCode::UNAUTHORIZED);
    env.shutdown().await;
}
