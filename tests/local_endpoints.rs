//! The proxy's own `/_proxy/` endpoints: liveness and readiness.

mod common;

use common::{TestEnv, bounded, credential};
use http::StatusCode;
use std::time::Duration;

const ROUTES: &str = r#"
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: hanshu
  match: { path_prefix: /as/hanshu }
  strip_prefix: true
  installation: { account: HanshuOrg2 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
"#;
const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu"), (18, "hanshuorg2")];

#[tokio::test]
async fn healthz_answers_200_and_is_never_forwarded() {
    bounded(60, "healthz", async {
        let env = TestEnv::start(ROUTES, INSTALLATIONS).await;
        let reply = env.get("/_proxy/healthz").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text().trim(), "ok");

        // Still 200 while the platform fails: liveness is about this process.
        env.fake.set_token_endpoint_failure(Some(500));
        assert_eq!(env.get("/_proxy/healthz").await.status, StatusCode::OK);
        env.get("/_proxy/nothing-here")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        assert!(
            env.fake.requests().is_empty(),
            "/_proxy/ reached the upstream"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn readyz_is_200_when_every_credential_can_produce_a_token() {
    bounded(60, "readyz ready", async {
        let env = TestEnv::start(ROUTES, INSTALLATIONS).await;
        let reply = env.get("/_proxy/readyz").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ready"], true, "{json}");
        for route in ["yanqianyu", "hanshu", "repos"] {
            assert_eq!(credential(&json, route)["ready"], true, "{json}");
        }
        common::assert_no_secret(&reply.text());
        // Readiness proved the tokens by minting them; requests reuse them.
        assert_eq!(env.fake.mints_for(14), 1);
        assert_eq!(env.fake.mints_for(18), 1);
        assert_eq!(env.get("/orgs/yanqianyu/x").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 1);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn strict_readyz_is_503_listing_the_credential_that_fails() {
    bounded(60, "readyz not ready", async {
        let env = TestEnv::start(ROUTES, INSTALLATIONS).await;
        env.fake.set_token_endpoint_failure(Some(500));

        let reply = env.get("/_proxy/readyz?strict=1").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        let json = reply.json();
        assert_eq!(json["ready"], false, "{json}");
        for route in ["yanqianyu", "hanshu"] {
            let c = credential(&json, route);
            assert_eq!(c["ready"], false, "{json}");
            assert_eq!(c["error"], "token_endpoint_failed", "{json}");
            assert!(c["reason"].is_string(), "{json}");
        }
        assert!(
            credential(&json, "yanqianyu")["credential"]
                .as_str()
                .is_some_and(|c| c.contains("14")),
            "{json}"
        );
        // Listing installations still works, so the `auto` route is ready.
        assert_eq!(credential(&json, "repos")["ready"], true, "{json}");
        common::assert_no_secret(&reply.text());

        // Ready again once the platform recovers (after the ~1 s backoff).
        env.fake.set_token_endpoint_failure(None);
        bounded(10, "readyz recovers", async {
            loop {
                let reply = env.get("/_proxy/readyz?strict=1").await;
                if reply.status == StatusCode::OK {
                    assert_eq!(reply.json()["ready"], true);
                    break;
                }
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        env.shutdown().await;
    })
    .await
}
