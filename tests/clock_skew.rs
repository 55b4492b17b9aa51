//! Clock skew: a platform whose clock is off by minutes refuses the app JWT;
//! the proxy learns the offset from its `Date`, signs on the platform's
//! clock, and reports the offset on metrics and readiness.

mod common;

use common::{EnvOptions, TestEnv, bounded};
use http::StatusCode;
use std::time::Duration;

const ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { account: yanqianyu }
";

/// The offset `atomgit_proxy_clock_offset_seconds{app="default"}` shows.
async fn offset_metric(env: &TestEnv) -> i64 {
    let text = env.get("/_proxy/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("atomgit_proxy_clock_offset_seconds{app=\"default\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no clock offset in the metrics:\n{text}"))
}

async fn start(offset: i64, token_lifetime: Duration) -> TestEnv {
    let env = TestEnv::start_with(EnvOptions {
        routes: ROUTES,
        installations: &[(14, "yanqianyu")],
        token_lifetime,
        ..EnvOptions::default()
    })
    .await;
    env.fake.set_clock_offset(offset);
    env
}

#[tokio::test]
async fn a_platform_ten_minutes_behind_still_mints() {
    bounded(60, "clock behind", async {
        // Five-minute tokens: timed on this machine's clock, they would look
        // expired before they were issued.
        let env = start(-600, Duration::from_secs(300)).await;
        let reply = env.get("/orgs/yanqianyu/a").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(env.fake.mints_for(14), 1);
        // The listing was refused once, then signed on the platform's clock;
        // the mint after it went through the first time.
        assert_eq!(env.fake.installation_list_count(), 2);
        let offset = offset_metric(&env).await;
        assert!((-605..=-595).contains(&offset), "{offset}");
        let ready = env.get("/_proxy/readyz").await.json();
        let shown = ready["apps"][0]["clock_offset_seconds"].as_i64().unwrap();
        assert!((-605..=-595).contains(&shown), "{ready}");
        assert_eq!(ready["apps"][0]["name"], "default");
        // The token is timed right: used again, not minted again.
        assert_eq!(env.get("/orgs/yanqianyu/b").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 1);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_platform_two_hours_ahead_still_mints() {
    bounded(60, "clock ahead", async {
        let env = start(7200, Duration::from_secs(3600)).await;
        let reply = env.get("/orgs/yanqianyu/a").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let offset = offset_metric(&env).await;
        assert!((7195..=7205).contains(&offset), "{offset}");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_right_clock_is_left_alone() {
    bounded(60, "clock right", async {
        let env = start(0, Duration::from_secs(3600)).await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        assert_eq!(env.fake.installation_list_count(), 1);
        assert_eq!(offset_metric(&env).await, 0);
        env.shutdown().await;
    })
    .await;
}
