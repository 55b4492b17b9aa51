//! 401 recovery: a token the platform refuses is dropped, a fresh one is
//! minted once (single flight) and the request resent once; streaming bodies
//! are never replayed; a second 401 goes to the caller.

mod common;

use common::users::{UserEnv, fake_oauth};
use common::{TestEnv, bounded, request, send};
use futures_util::stream;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::time::Duration;

const ROUTES: &str = common::YANQIANYU_ROUTE;

/// How many times the fake received `method path`.
fn received(env: &TestEnv, method: &Method, path: &str) -> usize {
    env.fake
        .api_requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// The value of an unlabelled metric, read from `/_proxy/metrics`.
async fn metric(env: &TestEnv, name: &str) -> f64 {
    let text = env.get("/_proxy/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// A proxy routing `/upload` to installation 14, whose token (minted by a
/// first request) the platform has since revoked.
async fn upload_with_a_revoked_token() -> TestEnv {
    let env = TestEnv::start(
        "- name: up\n  match: { path_prefix: /upload }\n  installation: { id: 14 }\n",
        &[(14, "yanqianyu")],
    )
    .await;
    assert_eq!(env.get("/upload/warm").await.status, StatusCode::OK);
    env.fake.revoke_all_tokens();
    env
}

#[tokio::test]
async fn a_revoked_token_is_replaced_by_one_mint_and_one_resend() {
    bounded(60, "revoked token", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 1);
        assert_eq!(metric(&env, "atomgit_proxy_token_retries_total").await, 0.0);
        env.fake.revoke_all_tokens();

        let reply = env.get("/orgs/yanqianyu/b").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(env.fake.mints_for(14), 2, "exactly one re-mint");
        assert_eq!(
            received(&env, &Method::GET, "/orgs/yanqianyu/b"),
            2,
            "the refused request and exactly one resend"
        );
        assert_eq!(env.fake.revoked_tokens_seen(), 1);
        assert_eq!(metric(&env, "atomgit_proxy_token_retries_total").await, 1.0);
        // The fresh token stays in use.
        assert_eq!(env.get("/orgs/yanqianyu/c").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 2);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_resend_after_a_401_takes_no_second_quota_slot() {
    bounded(60, "resend within one quota slot", async {
        let env = TestEnv::start_with(common::EnvOptions {
            routes: ROUTES,
            installations: &[(14, "yanqianyu")],
            extra_yaml: "quota: { per_second: 100, burst: 10 }\n",
            ..common::EnvOptions::default()
        })
        .await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        env.fake.revoke_all_tokens();
        let reply = env.get("/orgs/yanqianyu/b").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(received(&env, &Method::GET, "/orgs/yanqianyu/b"), 2);
        // Two requests, two slots of the bucket: the resend took none.
        assert_eq!(
            metric(&env, "atomgit_proxy_quota_wait_seconds_count").await,
            2.0
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_refusals_of_one_token_mints_once() {
    bounded(60, "burst of 401s", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        env.fake.revoke_all_tokens();
        let paths: Vec<String> = (0..20)
            .map(|i| format!("/orgs/yanqianyu/burst{i}"))
            .collect();
        let replies = futures_util::future::join_all(paths.iter().map(|p| env.get(p))).await;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        assert_eq!(env.fake.mints_for(14), 2, "one re-mint for the whole burst");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_small_body_is_replayed_whole() {
    bounded(60, "small body replay", async {
        let env = upload_with_a_revoked_token().await;
        let body = vec![7u8; 40_000];
        let reply = env
            .request(Method::POST, "/upload", &[], body.clone())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["bytes"], 40_000);
        assert_eq!(reply.json()["sha256"], hex::encode(Sha256::digest(&body)));
        assert_eq!(received(&env, &Method::POST, "/upload"), 2);
        env.shutdown().await;
    })
    .await;
}

/// A chunked body of `chunks` x 16 KiB with no length given.
fn streamed(chunks: usize) -> common::ReqBody {
    let frames = stream::iter(
        (0..chunks)
            .map(|_| Ok::<_, Infallible>(Frame::data(bytes::Bytes::from(vec![1u8; 16 * 1024])))),
    );
    StreamBody::new(frames).boxed()
}

#[tokio::test]
async fn a_streaming_post_is_not_replayed() {
    bounded(60, "streaming body", async {
        let env = upload_with_a_revoked_token().await;
        // 256 KiB of chunks, no Content-Length: past what is kept for a resend.
        let reply = send(
            &env.client,
            request(Method::POST, &env.url("/upload"), &[], streamed(16)),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
        assert_eq!(
            received(&env, &Method::POST, "/upload"),
            1,
            "never replayed"
        );
        assert_eq!(metric(&env, "atomgit_proxy_token_retries_total").await, 0.0);
        // A declared large body is not read ahead either.
        let big = vec![3u8; 100_000];
        let reply = env.request(Method::POST, "/upload", &[], big).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the refused token was dropped"
        );
        env.fake.revoke_all_tokens();
        let reply = env
            .request(Method::POST, "/upload", &[], vec![3u8; 100_000])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(received(&env, &Method::POST, "/upload"), 3);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_token_refused_on_every_mint_gives_the_caller_401_after_two_attempts() {
    bounded(60, "always revoked", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        env.fake.set_revoke_on_issue(true);
        let reply = env.get("/orgs/yanqianyu/a").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(
            reply.header("x-atomgit-proxy-error").is_none(),
            "the platform's own 401"
        );
        assert_eq!(received(&env, &Method::GET, "/orgs/yanqianyu/a"), 2);
        assert_eq!(env.fake.mints_for(14), 2);
        // Refusals that fresh tokens do not cure do not mint per request:
        // within the floor, the refusal goes straight to the caller.
        for i in 0..5 {
            let path = format!("/orgs/yanqianyu/again{i}");
            assert_eq!(env.get(&path).await.status, StatusCode::UNAUTHORIZED);
            assert_eq!(received(&env, &Method::GET, &path), 1, "not resent");
        }
        assert_eq!(env.fake.mints_for(14), 2);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_user_token_is_refreshed_not_reread() {
    bounded(60, "user token 401", async {
        let env = UserEnv::start(fake_oauth(Duration::from_secs(8 * 3600))).await;
        env.log_in().await;
        let first = env.use_user_route().await;
        assert_eq!(env.fake.refreshes(), 0);
        env.fake.revoke_token(&first);
        let reply = env.get("/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(env.fake.refreshes(), 1, "refreshed with the refresh token");
        let second = env.use_user_route().await;
        assert_ne!(second, first);
        // The store holds the refreshed grant.
        assert_eq!(env.grant("alice")["access_token"], second);
        env.shutdown().await;
    })
    .await;
}
