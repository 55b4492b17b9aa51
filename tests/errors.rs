//! The errors the proxy answers itself: status, `x-atomgit-proxy-error`,
//! the JSON shape, recovery, and that no body carries a credential.

mod common;

use common::{EnvOptions, TestEnv, bounded};
use http::StatusCode;
use std::time::Duration;

const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu")];

#[tokio::test]
async fn token_endpoint_failure_is_502_then_recovers() {
    bounded(60, "token endpoint failure", async {
        let env = TestEnv::start(common::YANQIANYU_ROUTE, INSTALLATIONS).await;
        env.fake.set_token_endpoint_failure(Some(500));

        let failed = env.get("/orgs/yanqianyu/x").await;
        failed.assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
        assert!(
            env.fake.api_requests().is_empty(),
            "nothing forwarded without a token"
        );

        // The proxy backs off about a second after a failure, then mints again.
        env.fake.set_token_endpoint_failure(None);
        let mut attempts = 0;
        let recovered = bounded(10, "recovery after the failure is cleared", async {
            loop {
                attempts += 1;
                let reply = env.get("/orgs/yanqianyu/x").await;
                if reply.status == StatusCode::OK {
                    return reply;
                }
                reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert_eq!(recovered.json()["owner"], "installation:14");
        assert_eq!(env.fake.mints_for(14), 1);
        assert!(attempts >= 1);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn unknown_owners_are_404_and_do_not_flood_the_installation_list() {
    bounded(60, "unknown owners", async {
        let env = TestEnv::start(
            r#"
            - name: repos
              match: { path_prefix: /repos }
              installation: auto
            "#,
            INSTALLATIONS,
        )
        .await;

        let known = env.get("/repos/yanqianyu/demo").await;
        assert_eq!(known.status, StatusCode::OK, "{}", known.text());
        let lists_before = env.fake.installation_list_count();
        assert_eq!(lists_before, 1);

        let first = env.get("/repos/nobody/demo").await;
        first.assert_proxy_error(StatusCode::NOT_FOUND, "installation_not_found");
        assert!(first.text().contains("nobody"), "{}", first.text());

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = env.client.clone();
            let url = env.url(&format!("/repos/stranger{i}/demo"));
            tasks.spawn(async move {
                common::send(
                    &client,
                    common::request(http::Method::GET, &url, &[], common::full("")),
                )
                .await
            });
        }
        while let Some(reply) = tasks.join_next().await {
            reply
                .expect("request task")
                .assert_proxy_error(StatusCode::NOT_FOUND, "installation_not_found");
        }
        let extra = env.fake.installation_list_count() - lists_before;
        assert!(
            extra <= 1,
            "{extra} extra installation listings for 21 unknown owners"
        );
        assert_eq!(env.fake.mint_count(), 1);
        assert_eq!(
            env.fake.api_requests().len(),
            1,
            "only the known owner was forwarded"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_went_away_is_502_upstream_unreachable() {
    bounded(60, "upstream unreachable", async {
        let env = TestEnv::start(common::YANQIANYU_ROUTE, INSTALLATIONS).await;
        // A cached token first: with the platform gone, minting would fail
        // before forwarding could.
        let ok = env.get("/orgs/yanqianyu/x").await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

        env.fake.shutdown();
        common::wait_until_refused(env.fake.addr(), 10).await;

        let reply = env.get("/orgs/yanqianyu/x").await;
        reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_unreachable");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_platform_that_is_not_there_fails_the_mint_first() {
    bounded(60, "no platform at all", async {
        // The fake runs, but the proxy is pointed at a port nobody listens on.
        let port = common::dead_port();
        let env = TestEnv::start_with(EnvOptions {
            routes: common::YANQIANYU_ROUTE,
            installations: INSTALLATIONS,
            upstream: Some(format!("http://127.0.0.1:{port}")),
            ..EnvOptions::default()
        })
        .await;

        let reply = env.get("/orgs/yanqianyu/x").await;
        reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
        assert!(
            env.fake.requests().is_empty(),
            "the fake was not the upstream"
        );
        env.shutdown().await;
    })
    .await
}

/// A `/slow/{ms}` route (the fake answers after that long) under a 1 s
/// response timeout.
async fn slow_env() -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes: r#"
            - name: slow
              match: { path_prefix: /slow }
              installation: { id: 14 }
        "#,
        installations: INSTALLATIONS,
        extra_yaml: "timeouts: { response: 1s }",
        ..EnvOptions::default()
    })
    .await
}

/// A 3 s answer is given up on after about the 1 s timeout.
async fn assert_times_out(env: &TestEnv) {
    let started = tokio::time::Instant::now();
    let reply = env.get("/slow/3000").await;
    let took = started.elapsed();
    reply.assert_proxy_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn a_slow_upstream_is_504_upstream_timeout() {
    bounded(60, "upstream timeout", async {
        let env = slow_env().await;

        let fast = env.get("/slow/10").await;
        assert_eq!(fast.status, StatusCode::OK, "{}", fast.text());

        assert_times_out(&env).await;
        env.shutdown().await;
    })
    .await
}

/// A kept upstream connection carries its response timer from request to
/// request: one whose timer ran out while it sat idle still times the next
/// request out, and does not time out one that answers in time.
#[tokio::test]
async fn a_kept_connection_times_requests_after_an_idle_spell() {
    bounded(60, "upstream timeout after idling", async {
        let env = slow_env().await;

        assert_eq!(env.get("/slow/10").await.status, StatusCode::OK);
        // Longer than the response timeout: the kept connection's timer
        // fires while it is idle.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let after_idle = env.get("/slow/10").await;
        assert_eq!(after_idle.status, StatusCode::OK, "{}", after_idle.text());
        let in_time = env.get("/slow/600").await;
        assert_eq!(in_time.status, StatusCode::OK, "{}", in_time.text());

        assert_times_out(&env).await;
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn no_route_is_404() {
    bounded(60, "no route", async {
        let env = TestEnv::start(common::YANQIANYU_ROUTE, INSTALLATIONS).await;
        // With a token cached, so a leak would have something to leak.
        assert_eq!(env.get("/orgs/yanqianyu/x").await.status, StatusCode::OK);

        for path in ["/", "/orgs/other", "/user/repos", "/orgs/yanqianyu2/x"] {
            let reply = env
                .request(
                    http::Method::GET,
                    path,
                    &[("authorization", "Bearer caller-secret")],
                    "",
                )
                .await;
            reply.assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
            assert!(!reply.text().contains("caller-secret"), "{}", reply.text());
        }
        env.shutdown().await;
    })
    .await
}
