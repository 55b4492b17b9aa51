//! Short-lived tokens are refreshed ahead of expiry: under continuous load
//! the upstream never sees an expired token and no request fails.
//!
//! The fake judges expiry by the wall clock, so this end-to-end check runs
//! in real time; it is kept to two token lifetimes. The same property on a
//! clock the test drives, over many lifetimes and with a refresh slower than
//! the guard, is `continuous_use_of_short_tokens_never_gets_an_unusable_one`
//! in src/credentials/cache.rs.

mod common;

use common::{EnvOptions, TestEnv, bounded};
use http::StatusCode;
use std::time::Duration;
use tokio::time::Instant;

/// The fake's token lifetime.
const LIFE: Duration = Duration::from_secs(2);
/// How long requests keep coming: past two lifetimes.
const SPAN: Duration = Duration::from_millis(4500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_receives_an_expired_token() {
    bounded(60, "continuous requests across token lifetimes", async {
        // 2 s tokens: the proxy refreshes at half-life and stops injecting a
        // token in its last 10% (200 ms), well above a loopback round trip.
        let env = TestEnv::start_with(EnvOptions {
            routes: common::YANQIANYU_ROUTE,
            installations: &[(14, "yanqianyu")],
            token_lifetime: LIFE,
            ..EnvOptions::default()
        })
        .await;

        let started = Instant::now();
        let mut sent = 0;
        let mut tokens = std::collections::HashSet::new();
        while started.elapsed() < SPAN {
            let path = format!("/orgs/yanqianyu/r{sent}");
            let reply = env.get(&path).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "request {sent} at {:?}: {}",
                started.elapsed(),
                reply.text()
            );
            tokens.insert(common::single_bearer(&env.last_api_request(&path).headers));
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sent > 50, "only {sent} requests in {SPAN:?}");
        assert_eq!(env.fake.expired_tokens_seen(), 0);
        let mints = env.fake.mints_for(14);
        assert!(
            mints >= 2,
            "a {LIFE:?} token must be refreshed within {SPAN:?}: {mints} mint(s)"
        );
        // 4.5 s of 2 s tokens refreshed at half-life: no more than one mint
        // per refresh window (plus the first), with room for timing.
        assert!(mints <= 7, "refreshed too eagerly: {mints} mints");
        assert!(
            tokens.len() >= 2,
            "the upstream saw only {} token(s)",
            tokens.len()
        );
        env.shutdown().await;
    })
    .await
}
