//! Quota: the proxy learns each credential's budget from `x-ratelimit-*`
//! and stops asking while it is spent; a token bucket spaces requests.
//! The fake platform keeps the budget with a window of seconds.

mod common;

use atomgit_fake::{FakeRateLimit, TokenOwner};
use common::quota::{allow_six_per_second, assert_at_most_six_per_second};
use common::{EnvOptions, Reply, TestEnv, YANQIANYU_ROUTE, bounded};
use http::StatusCode;
use std::time::Duration;

const TWO_ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: hanshu
  match: { path_prefix: /orgs/hanshuorg2 }
  installation: { id: 18 }
";

async fn env(extra: &str, routes: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes,
        installations: &[(14, "yanqianyu"), (18, "hanshuorg2")],
        extra_yaml: extra,
        ..EnvOptions::default()
    })
    .await
}

/// API requests the fake received under `prefix`.
fn seen_under(env: &TestEnv, prefix: &str) -> usize {
    env.fake
        .api_requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", reply.headers))
}

/// Thirty requests under `/orgs/yanqianyu` at once, to a platform that
/// refuses a seventh request in one second.
async fn thirty_at_once(env: &TestEnv) -> Vec<Reply> {
    allow_six_per_second(&env.fake);
    futures_util::future::join_all(
        (0..30).map(|i| async move { env.get(&format!("/orgs/yanqianyu/r{i}")).await }),
    )
    .await
}

#[tokio::test]
async fn a_spent_budget_is_answered_locally_until_the_window_resets() {
    bounded(30, "budget exhaustion and recovery", async {
        let env = env("quota: { per_second: 0 }", TWO_ROUTES).await;
        env.fake.set_rate_limit(FakeRateLimit {
            limit: 1000,
            window: Duration::from_secs(2),
            per_second: None,
        });
        env.fake.set_limit_for(TokenOwner::Installation(14), 3);
        for i in 0..3 {
            let reply = env.get(&format!("/orgs/yanqianyu/n{i}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        let before = seen_under(&env, "/orgs/yanqianyu");
        assert_eq!(before, 3);

        let refused = env.get("/orgs/yanqianyu/n3").await;
        refused.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let wait = retry_after(&refused);
        assert!((1..=3).contains(&wait), "Retry-After {wait} for a 2s window");
        assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(refused.header("x-ratelimit-used"), Some("3"));
        assert!(refused.header("x-ratelimit-reset").is_some());
        for _ in 0..5 {
            let again = env.get("/orgs/yanqianyu/n4").await;
            assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(
            seen_under(&env, "/orgs/yanqianyu"),
            before,
            "no request reached the platform while the budget was spent"
        );

        // Another installation's budget is its own.
        let other = env.get("/orgs/hanshuorg2/x").await;
        assert_eq!(other.status, StatusCode::OK, "{}", other.text());

        // At reset, traffic resumes by itself.
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let mut resumed = None;
        for _ in 0..20 {
            let reply = env.get("/orgs/yanqianyu/n5").await;
            if reply.status == StatusCode::OK {
                resumed = Some(reply);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let resumed = resumed.expect("requests go through again after the reset");
        assert_eq!(resumed.header("x-ratelimit-remaining"), Some("2"));
        assert_eq!(seen_under(&env, "/orgs/yanqianyu"), before + 1);

        let metrics = env.get("/_proxy/metrics").await.text();
        assert!(
            metrics.contains(
                r#"atomgit_proxy_quota_rejected_total{credential="installation:14",reason="budget"} 6"#
            ),
            "{metrics}"
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_403_with_remaining_0_is_passed_on_once_then_answered_locally() {
    bounded(30, "a budget spent elsewhere", async {
        let env = env("quota: { per_second: 0 }", YANQIANYU_ROUTE).await;
        // Other tools spent the hour without the proxy.
        env.fake.exhaust_budget(&TokenOwner::Installation(14));
        let first = env.get("/orgs/yanqianyu/a").await;
        assert_eq!(first.status, StatusCode::FORBIDDEN, "{}", first.text());
        assert_eq!(
            first.header("x-atomgit-proxy-error"),
            None,
            "the platform's own"
        );
        assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));
        assert!(first.text().contains("rate limit"), "{}", first.text());

        let second = env.get("/orgs/yanqianyu/b").await;
        second.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!(retry_after(&second) > 3000, "the fake's window is an hour");
        assert_eq!(seen_under(&env, "/orgs/yanqianyu"), 1);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_passed_on_once_and_held_to() {
    bounded(30, "the platform's per-second limit", async {
        let env = env("quota: { per_second: 0 }", YANQIANYU_ROUTE).await;
        env.fake.set_rate_limit(FakeRateLimit {
            limit: 1000,
            window: Duration::from_secs(3600),
            per_second: Some(1),
        });
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        let refused = env.get("/orgs/yanqianyu/b").await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.header("x-atomgit-proxy-error"),
            None,
            "the platform's own"
        );
        assert_eq!(refused.header("retry-after"), Some("1"));
        let local = env.get("/orgs/yanqianyu/c").await;
        local.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert_eq!(retry_after(&local), 1);
        assert_eq!(seen_under(&env, "/orgs/yanqianyu"), 2);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(env.get("/orgs/yanqianyu/d").await.status, StatusCode::OK);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn requests_queued_behind_a_slow_mint_still_leave_spaced() {
    bounded(40, "a slow mint, then 12 requests at 5 per second", async {
        let env = env(
            "quota: { per_second: 5, burst: 1, max_wait: 10s }",
            YANQIANYU_ROUTE,
        )
        .await;
        allow_six_per_second(&env.fake);
        // The first mint takes 1.5 s: slots taken while it runs would all
        // be due by the time the token lands, and leave together.
        env.fake.set_mint_delay(Some(Duration::from_millis(1500)));
        let callers = &env;
        let replies = futures_util::future::join_all(
            (0..12).map(|i| async move { callers.get(&format!("/orgs/yanqianyu/m{i}")).await }),
        )
        .await;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        assert_eq!(env.fake.mints_for(14), 1, "one mint for the burst");
        assert_at_most_six_per_second(&env.fake, "/orgs/yanqianyu");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn thirty_concurrent_requests_are_spaced_to_per_second() {
    bounded(40, "30 requests at 5 per second", async {
        let env = env(
            "quota: { per_second: 5, burst: 1, max_wait: 10s }",
            YANQIANYU_ROUTE,
        )
        .await;
        let replies = thirty_at_once(&env).await;
        for r in &replies {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        assert_at_most_six_per_second(&env.fake, "/orgs/yanqianyu");
        let metrics = env.get("/_proxy/metrics").await.text();
        assert!(
            metrics.contains("atomgit_proxy_quota_wait_seconds_count 30"),
            "{metrics}"
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn past_max_wait_requests_are_refused_and_none_exceed_the_rate() {
    bounded(30, "30 requests with max_wait 200ms", async {
        let env = env(
            "quota: { per_second: 5, burst: 1, max_wait: 200ms }",
            YANQIANYU_ROUTE,
        )
        .await;
        let replies = thirty_at_once(&env).await;
        let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
        let refused: Vec<&Reply> = replies
            .iter()
            .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
            .collect();
        assert_eq!(ok + refused.len(), 30);
        assert!(ok >= 1 && !refused.is_empty(), "ok {ok}, refused {}", refused.len());
        for r in &refused {
            r.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            assert!(retry_after(r) >= 1);
        }
        assert_eq!(seen_under(&env, "/orgs/yanqianyu"), ok);
        assert_at_most_six_per_second(&env.fake, "/orgs/yanqianyu");
        let metrics = env.get("/_proxy/metrics").await.text();
        let line = format!(
            r#"atomgit_proxy_quota_rejected_total{{credential="installation:14",reason="max_wait"}} {}"#,
            refused.len()
        );
        assert!(metrics.contains(&line), "{metrics}");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_budget_shows_in_metrics_and_readyz() {
    bounded(30, "quota visibility", async {
        let env = env("", TWO_ROUTES).await;
        env.fake.set_limit_for(TokenOwner::Installation(14), 50);
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        assert_eq!(env.get("/orgs/yanqianyu/b").await.status, StatusCode::OK);
        let reply = env.get("/orgs/yanqianyu/c").await;
        let reset = reply.header("x-ratelimit-reset").expect("reset").to_owned();

        let metrics = env.get("/_proxy/metrics").await.text();
        for line in [
            r#"atomgit_proxy_ratelimit_remaining{credential="installation:14"} 47"#.to_owned(),
            r#"atomgit_proxy_ratelimit_limit{credential="installation:14"} 50"#.to_owned(),
            format!(r#"atomgit_proxy_ratelimit_reset_timestamp_seconds{{credential="installation:14"}} {reset}"#),
        ] {
            assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
        }

        let ready = env.get("/_proxy/readyz").await.json();
        let quota = ready["quota"].as_array().expect("a quota list");
        let mine = quota
            .iter()
            .find(|q| q["credential"] == "installation:14")
            .unwrap_or_else(|| panic!("{ready}"));
        assert_eq!(mine["remaining"], 47);
        assert_eq!(mine["limit"], 50);
        assert_eq!(mine["reset"].to_string(), reset);
        assert!(mine.get("blocked_for_secs").is_none());
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_users_budget_is_learned_under_the_user() {
    bounded(60, "a user's budget", async {
        let env =
            common::users::UserEnv::start(common::users::fake_oauth(Duration::from_secs(3600)))
                .await;
        env.log_in().await;
        env.use_user_route().await;
        env.fake
            .exhaust_budget(&TokenOwner::User(common::users::USER.to_owned()));
        let spent = env.get("/as/alice/user").await;
        assert_eq!(spent.status, StatusCode::FORBIDDEN, "the platform's 403");
        let local = env.get("/as/alice/user").await;
        local.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let metrics = env.get("/_proxy/metrics").await.text();
        assert!(
            metrics.contains(r#"atomgit_proxy_ratelimit_remaining{credential="user:alice"} 0"#),
            "{metrics}"
        );
        env.shutdown().await;
    })
    .await;
}
