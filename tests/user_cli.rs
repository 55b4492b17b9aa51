//! The operator's commands for user grants, run as the built binary against
//! the fake AtomGit in this process: `atomgit-proxy login` prints a link
//! that works, and `atomgit-proxy token --route USERROUTE` prints the user's
//! token, refreshing (and persisting) it when it is due.

mod common;

use common::users::{USER, UserEnv, fake_oauth, run_cli};
use common::{bounded, now_ms};
use http::StatusCode;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

/// Runs `atomgit-proxy token -c CONFIG --route alice` and returns the token.
async fn token_command(env: &UserEnv) -> String {
    let config = env.config_path.display().to_string();
    let out = run_cli(&["token", "-c", &config, "--route", "alice"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "token failed: {stderr}");
    assert!(
        stdout.starts_with("atu_") && !stdout.contains(char::is_whitespace),
        "stdout is one user token: {stdout:?}"
    );
    stdout
}

#[tokio::test]
async fn token_prints_a_fresh_grant_without_refreshing() {
    bounded(60, "token, fresh", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        let stored = std::fs::read(&env.store_path).expect("the store");
        let token = token_command(&env).await;
        assert_eq!(
            token,
            env.grant(USER)["access_token"].as_str().unwrap_or_default()
        );
        assert_eq!(env.fake.refreshes(), 0, "an 8 h token is not due");
        assert_eq!(
            std::fs::read(&env.store_path).expect("the store"),
            stored,
            "nothing to persist"
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn token_refreshes_an_expired_grant_and_persists_it() {
    bounded(60, "token, expired", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        let before = env.grant(USER);
        env.age_grant(8 * HOUR, -1_000);

        let token = token_command(&env).await;
        assert_ne!(token, before["access_token"].as_str().unwrap_or_default());
        assert_eq!(env.fake.refreshes(), 1);
        let after = env.grant(USER);
        assert_eq!(after["access_token"], token.as_str(), "persisted");
        assert_ne!(after["refresh_token"], before["refresh_token"], "rotated");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn token_refreshes_a_grant_within_the_refresh_margin() {
    bounded(60, "token, due", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        let before = env.grant(USER);
        // An 8 h token with 4 minutes left: inside the default 5 min margin.
        env.age_grant(8 * HOUR - Duration::from_secs(240), 240_000);

        let token = token_command(&env).await;
        assert_ne!(
            token,
            before["access_token"].as_str().unwrap_or_default(),
            "a token due for refresh is refreshed, not printed"
        );
        assert_eq!(env.fake.refreshes(), 1);
        let after = env.grant(USER);
        assert_eq!(after["access_token"], token.as_str(), "persisted");
        assert_ne!(after["refresh_token"], before["refresh_token"], "rotated");
        assert!(
            after["access_expires_at_ms"].as_u64().unwrap_or(0) > now_ms() + 7 * 3_600_000,
            "the new token is a fresh 8 h one"
        );
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn login_prints_a_link_that_works_once() {
    bounded(60, "login command", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let config = env.config_path.display().to_string();
        let out = run_cli(&["login", "-c", &config, USER]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "login failed: {stderr}");
        let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            link.starts_with(&env.url("/_proxy/oauth/login?")),
            "stdout is the link alone: {link:?}"
        );
        assert!(stderr.contains("10 minutes"), "{stderr}");

        let page = env.browser().open(&link).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("Logged in as alice"), "{}", page.body);
        env.use_user_route().await;

        let again = env.browser().open(&link).await;
        assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
        assert_eq!(env.fake.code_exchanges(), 1);
        env.shutdown().await;
    })
    .await;
}
