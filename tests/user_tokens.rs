//! A user grant's life after the login: how its expiry is read, refreshes
//! with rotating refresh tokens under concurrency, revocation, restarts, and
//! the store file (its mode, and a folder that cannot be written).
//!
//! These tests run on the real clock with short token lifetimes, waiting on
//! the wall-clock expiry the store file records, each bounded.

mod common;

use atomgit_fake::{ExpiresFormat, FakeOAuth};
use common::users::{ReadOnlyDir, USER, UserEnv, fake_oauth, sleep_until_ms};
use common::{bounded, now_ms};
use http::StatusCode;
use std::collections::BTreeSet;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
/// Short enough to wait out; the proxy refreshes at half of it and stops
/// injecting a token in its last tenth.
const SHORT: Duration = Duration::from_secs(4);

fn ms(value: &serde_json::Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not epoch milliseconds: {value}"))
}

/// Waits until the stored grant's token is past the last tenth of its life
/// (no longer injected) but, unless this task is starved, not yet expired.
async fn wait_until_unusable(env: &UserEnv) {
    let grant = env.grant(USER);
    let (issued, expires) = (
        ms(&grant["updated_at_ms"]),
        ms(&grant["access_expires_at_ms"]),
    );
    let guard = (expires - issued) / 10;
    sleep_until_ms(expires - guard / 2).await;
}

async fn expiry_is_read_as(format: ExpiresFormat) {
    let lifetime = 2 * HOUR;
    let env = UserEnv::start(FakeOAuth {
        expires_format: format,
        ..fake_oauth(lifetime)
    })
    .await;
    let before = now_ms();
    env.log_in().await;
    let after = now_ms();
    let grant = env.grant(USER);
    let expires = ms(&grant["access_expires_at_ms"]);
    let lifetime_ms = lifetime.as_millis() as u64;
    // Epoch seconds lose the milliseconds; relative seconds are rounded up.
    let slack = 3_000;
    assert!(
        expires + slack >= before + lifetime_ms && expires <= after + lifetime_ms + slack,
        "{format:?}: access_expires_at_ms {expires} is not about now + 2h ({} ms off)",
        expires as i64 - (before + lifetime_ms) as i64
    );
    let refresh = ms(&grant["refresh_expires_at_ms"]);
    let refresh_ms = 180 * 86_400_000;
    assert!(
        refresh + slack >= before + refresh_ms && refresh <= after + refresh_ms + slack,
        "{format:?}: refresh_expires_at_ms {refresh} is not about now + 180 days"
    );
    env.use_user_route().await;
    assert_eq!(env.fake.refreshes(), 0, "a 2 h token is not due");
    env.shutdown().await;
}

#[tokio::test]
async fn expires_in_as_epoch_milliseconds_is_an_absolute_time() {
    bounded(
        30,
        "epoch ms",
        expiry_is_read_as(ExpiresFormat::EpochMillis),
    )
    .await;
}

#[tokio::test]
async fn expires_in_as_epoch_seconds_is_an_absolute_time() {
    bounded(
        30,
        "epoch s",
        expiry_is_read_as(ExpiresFormat::EpochSeconds),
    )
    .await;
}

#[tokio::test]
async fn expires_in_as_relative_seconds_is_a_duration() {
    bounded(
        30,
        "relative",
        expiry_is_read_as(ExpiresFormat::RelativeSeconds),
    )
    .await;
}

#[tokio::test]
async fn fifty_concurrent_requests_past_expiry_cause_one_refresh_with_rotation() {
    bounded(60, "rotation", async {
        let env = UserEnv::start(fake_oauth(SHORT)).await;
        env.log_in().await;
        let first = env.grant(USER);
        let old_token = env.use_user_route().await;
        // The refreshed token lives long: any second refresh now would be a
        // duplicate, not a due one.
        env.fake.set_access_lifetime(HOUR);
        wait_until_unusable(&env).await;

        let requests = (0..50).map(|_| env.get("/as/alice/user"));
        let replies = futures_util::future::join_all(requests).await;
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(env.fake.refreshes(), 1, "one refresh for 50 requests");
        assert_eq!(
            env.fake.refused_refreshes(),
            0,
            "no refresh token was reused"
        );
        assert_eq!(
            env.fake.expired_tokens_seen(),
            0,
            "no expired token was sent"
        );

        let seen = env.fake.api_requests();
        let burst = &seen[seen.len() - 50..];
        let tokens: BTreeSet<String> = burst
            .iter()
            .map(|r| env.owned_user_token(&r.headers))
            .collect();
        assert_eq!(tokens.len(), 1, "all 50 used the one new token");
        let new_token = tokens.into_iter().next().unwrap_or_default();
        assert_ne!(new_token, old_token);

        let second = env.grant(USER);
        assert_eq!(second["access_token"], new_token.as_str(), "stored first");
        assert_ne!(
            second["refresh_token"], first["refresh_token"],
            "the rotated refresh token is stored"
        );
        assert!(ms(&second["access_expires_at_ms"]) > now_ms() + HOUR.as_millis() as u64 / 2);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_grant_fails_fast_until_the_person_logs_in_again() {
    bounded(60, "revoked", async {
        let env = UserEnv::start(fake_oauth(SHORT)).await;
        env.log_in().await;
        env.use_user_route().await;
        env.fake.revoke_user_grants(USER);
        wait_until_unusable(&env).await;

        let reply = env.get("/as/alice/user").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header("x-atomgit-proxy-error"), Some("grant_revoked"));
        assert_eq!(reply.json()["error"], "grant_revoked");
        assert_eq!(env.fake.refused_refreshes(), 1);

        // One user's dead grant does not take the replica out of service;
        // the strict form (deploy gates) says not every credential works.
        let ready = env.get("/_proxy/readyz").await;
        assert_eq!(ready.status, StatusCode::OK);
        assert_eq!(ready.json()["credentials_ready"], false);
        let ready = env.get("/_proxy/readyz?strict=1").await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        let ready = ready.json();
        assert_eq!(ready["ready"], false);
        let entry = ready["credentials"]
            .as_array()
            .and_then(|list| list.iter().find(|c| c["credential"] == "user alice"))
            .unwrap_or_else(|| panic!("readyz names `user alice`: {ready}"))
            .clone();
        assert_eq!(entry["ready"], false);
        assert_eq!(entry["error"], "grant_revoked");
        let reason = entry["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("atomgit-proxy login alice"),
            "the reason says what to do: {reason}"
        );
        assert!(
            env.grant(USER)["revoked"].is_string(),
            "the store remembers the grant is dead"
        );

        // No loop against a dead refresh token: past the failure backoff too.
        for _ in 0..3 {
            let reply = env.get("/as/alice/user").await;
            assert_eq!(reply.header("x-atomgit-proxy-error"), Some("grant_revoked"));
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert_eq!(env.fake.refused_refreshes(), 1, "no more refresh attempts");
        assert_eq!(env.fake.refreshes(), 0);

        env.fake.set_access_lifetime(HOUR);
        env.log_in().await;
        env.use_user_route().await;
        assert_eq!(
            env.get("/_proxy/readyz?strict=1").await.status,
            StatusCode::OK
        );
        assert!(env.grant(USER).get("revoked").is_none());
        assert_eq!(env.fake.code_exchanges(), 2);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn grants_survive_a_restart() {
    bounded(60, "restart", async {
        let mut env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        let before = env.use_user_route().await;
        env.restart().await;
        let after = env.use_user_route().await;
        assert_eq!(after, before, "the stored token is used again");
        assert_eq!(env.fake.code_exchanges(), 1, "no new login");
        assert_eq!(env.fake.refreshes(), 0, "no refresh");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_grant_that_expired_while_the_proxy_was_down_is_refreshed() {
    bounded(60, "expired across a restart", async {
        let mut env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        let old = env.use_user_route().await;
        if let Some(running) = env.running.take() {
            running.shutdown().await;
        }
        env.age_grant(8 * HOUR + Duration::from_secs(60), -60_000);
        env.restart().await;

        let new = env.use_user_route().await;
        assert_ne!(new, old, "the expired token is not injected");
        assert_eq!(env.fake.refreshes(), 1);
        assert_eq!(env.grant(USER)["access_token"], new.as_str());
        // Stays fresh: the next request neither refreshes nor changes token.
        assert_eq!(env.use_user_route().await, new);
        assert_eq!(env.fake.refreshes(), 1);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_store_is_private_and_a_read_only_folder_does_not_lose_a_refresh() {
    use std::os::unix::fs::PermissionsExt;
    bounded(60, "store file", async {
        let env = UserEnv::start(fake_oauth(SHORT)).await;
        env.log_in().await;
        let mode = std::fs::metadata(&env.store_path)
            .expect("the store exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the store file is private");

        let old = env.use_user_route().await;
        env.fake.set_access_lifetime(HOUR);
        wait_until_unusable(&env).await;
        let bytes = std::fs::read(&env.store_path).expect("the store");
        let folder = env.store_path.parent().expect("the store's folder");
        {
            let _read_only = ReadOnlyDir::new(folder);
            let new = env.use_user_route().await;
            assert_ne!(new, old, "a refreshed token is served from memory");
            assert_eq!(env.fake.refreshes(), 1);
            // And kept: the next request neither refreshes nor falls back.
            assert_eq!(env.use_user_route().await, new);
            assert_eq!(env.fake.refreshes(), 1);
            assert_eq!(env.fake.refused_refreshes(), 0);
            assert_eq!(
                std::fs::read(&env.store_path).expect("the store"),
                bytes,
                "the file is untouched while the folder is read-only"
            );
        }
        assert_eq!(
            std::fs::read(&env.store_path).expect("the store"),
            bytes,
            "the file is not corrupted"
        );
        assert_eq!(env.grant(USER)["access_token"], old.as_str());
        let leftovers: Vec<String> = std::fs::read_dir(folder)
            .expect("list the folder")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replicas_sharing_the_store_refresh_once_between_them() {
    bounded(60, "replicas", async {
        let env = UserEnv::start(fake_oauth(SHORT)).await;
        env.log_in().await;
        env.use_user_route().await;
        // A second proxy on the same config and store file, as a replica
        // sharing a volume would run.
        let config = atomgit_proxy::config::Config::load(&env.config_path).unwrap();
        let any_port = [atomgit_proxy::config::ListenAddr::Tcp(
            "127.0.0.1:0".parse().unwrap(),
        )];
        let listeners = atomgit_proxy::server::bind(&any_port, config.unix_socket_mode).unwrap();
        let replica = atomgit_proxy::app::start(config, listeners).unwrap();
        let replica_url = format!("http://{}/as/alice/user", replica.addrs[0]);
        let first = common::get(&env.client, &replica_url, &[]).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        env.fake.set_access_lifetime(HOUR);
        wait_until_unusable(&env).await;

        // Both replicas find the token due at once.
        let here = (0..25).map(|_| env.get("/as/alice/user"));
        let there = (0..25).map(|_| common::get(&env.client, &replica_url, &[]));
        let (here, there) = futures_util::future::join(
            futures_util::future::join_all(here),
            futures_util::future::join_all(there),
        )
        .await;
        for reply in here.iter().chain(&there) {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(
            env.fake.refreshes(),
            1,
            "one refresh between the two replicas"
        );
        assert_eq!(
            env.fake.refused_refreshes(),
            0,
            "no refresh token was spent twice"
        );
        assert!(env.grant(USER).get("revoked").is_none());
        bounded(35, "replica shutdown", replica.shutdown()).await;
        env.shutdown().await;
    })
    .await;
}
