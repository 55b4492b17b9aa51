//! Fleet mode when things go wrong: Redis down at start or mid-run and
//! back, a lock abandoned by a replica, a replica process killed while it
//! refreshes. Each test runs its own `redis-server` and replicas (see
//! `tests/fleet.rs` for the shared-state tests).

mod common;

use common::fleet::{Fleet, log_in_across, start_fleet_fake};
use common::redis::RedisServer;
use common::users::fake_oauth;
use common::{bounded, now_ms};
use http::StatusCode;
use std::time::Duration;
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
const PREFIX: &str = "atomgit-proxy:";

#[tokio::test]
async fn with_redis_down_the_fleet_serves_what_it_can_and_recovers_when_it_returns() {
    bounded(120, "redis down and back", async {
        let mut redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(Duration::from_secs(8)), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        log_in_across(&fleet, &fake, 0).await;
        let logged_in_ms = now_ms();
        for i in 0..3 {
            assert_eq!(fleet.get(i, "/as/alice/user").await.status, StatusCode::OK);
            assert_eq!(fleet.get(i, "/orgs/yanqianyu").await.status, StatusCode::OK);
        }
        redis.kill(true).await;

        // Installation routes: the cached token, and a cold one minted locally.
        for i in 0..3 {
            assert_eq!(fleet.get(i, "/orgs/yanqianyu").await.status, StatusCode::OK);
            let cold = fleet.get(i, "/orgs/other").await;
            assert_eq!(cold.status, StatusCode::OK, "{}", cold.text());
        }
        // User routes serve the cached token while it is usable...
        assert_eq!(fleet.get(2, "/as/alice/user").await.status, StatusCode::OK);
        let ready = fleet.get(0, "/_proxy/readyz").await.json();
        assert_eq!(ready["store"]["backend"], "redis");
        assert_eq!(ready["store"]["state"], "unavailable", "{ready}");
        // ... and once it ran out (8 s, unusable from 7.2 s), store_unavailable.
        common::users::sleep_until_ms(logged_in_ms + 7_400).await;
        for i in 0..3 {
            fleet
                .get(i, "/as/alice/user")
                .await
                .assert_proxy_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        }
        assert_eq!(fake.refreshes(), 0, "no refresh without the lock");
        let metrics = fleet.get(0, "/_proxy/metrics").await.text();
        assert!(
            metrics.contains("atomgit_proxy_store_errors_total{op=\"grant_get\"}"),
            "{metrics}"
        );

        // Back: every replica recovers, same processes, same grant.
        redis.restart().await;
        for i in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let reply = fleet.get(i, "/as/alice/user").await;
                if reply.status == StatusCode::OK {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {i}: {}", reply.text());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert_eq!(fake.refreshes(), 1, "one refresh for the fleet");
        assert_eq!(fake.refused_refreshes(), 0);
        let ready = fleet.get(1, "/_proxy/readyz").await.json();
        assert_eq!(ready["store"]["state"], "ok", "{ready}");
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_fleet_starts_with_redis_down_and_uses_it_once_it_is_up() {
    bounded(60, "start without redis", async {
        let mut redis = RedisServer::start().await;
        redis.kill(false).await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(2, &fake, &redis.url(), PREFIX).await;
        // Installation tokens are minted locally; users wait for the store.
        for i in 0..2 {
            assert_eq!(fleet.get(i, "/orgs/yanqianyu").await.status, StatusCode::OK);
        }
        assert_eq!(fake.mints_for(14), 2, "one local mint per replica");
        fleet
            .get(0, "/as/alice/user")
            .await
            .assert_proxy_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        let ready = fleet.get(0, "/_proxy/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "plain readyz stays ready");
        assert_eq!(ready.json()["store"]["state"], "unavailable");

        redis.restart().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = fleet.get(0, "/as/alice/user").await;
            if reply.header("x-atomgit-proxy-error") == Some("grant_missing") {
                break;
            }
            assert!(Instant::now() < deadline, "{}", reply.text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        log_in_across(&fleet, &fake, 0).await;
        assert_eq!(fleet.get(1, "/as/alice/user").await.status, StatusCode::OK);
        assert_eq!(
            fleet.get(0, "/_proxy/readyz").await.json()["store"]["state"],
            "ok"
        );
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_refresh_lock_left_by_a_dead_replica_frees_itself_within_its_lease() {
    bounded(90, "abandoned lock", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(Duration::from_secs(4)), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        log_in_across(&fleet, &fake, 0).await;
        // A replica took the lock and was SIGKILLed: nobody renews or
        // releases it.
        let mut c = redis.connection().await.expect("connect");
        let lease = atomgit_proxy::store::redis::LOCK_LEASE;
        let _: () = redis::cmd("SET")
            .arg("atomgit-proxy:{user:alice}:lock")
            .arg("dead-replica")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut c)
            .await
            .expect("SET the lock");
        let taken = Instant::now();
        // The token runs out while the lock is held; replica C must wait for
        // the lease and then refresh.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(fake.refreshes(), 0, "nobody refreshes under another's lock");
        let reply = fleet.get(2, "/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let waited = taken.elapsed();
        assert!(
            waited >= lease - Duration::from_millis(500),
            "served after {waited:?}, inside the lease"
        );
        assert!(
            waited <= lease + Duration::from_secs(5),
            "served after {waited:?}"
        );
        assert_eq!(fake.refreshes(), 1);
        assert_eq!(fake.expired_tokens_seen(), 0);
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_replica_killed_mid_refresh_blocks_the_others_only_for_the_lease() {
    bounded(90, "replica killed mid-refresh", async {
        let redis = RedisServer::start().await;
        let oauth = atomgit_fake::FakeOAuth {
            rotate_refresh_tokens: false,
            ..fake_oauth(Duration::from_secs(4))
        };
        let fake = start_fleet_fake(oauth, HOUR).await;
        let fleet = Fleet::start(2, &fake, &redis.url(), PREFIX).await;
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("an address")
        };
        let config = fleet.extra_config(addr, &fake, &redis.url(), PREFIX);
        let mut process = common::process::serve(&config, None);
        let process_url = format!("http://{addr}/as/alice/user");
        common::process::wait_healthy(&addr.to_string()).await;
        log_in_across(&fleet, &fake, 0).await;
        // The token runs out; the process replica starts a refresh that hangs.
        tokio::time::sleep(Duration::from_secs(4)).await;
        fake.set_oauth_delay(Some(Duration::from_secs(30)));
        let client = fleet.client.clone();
        let hanging = tokio::spawn(async move {
            common::try_send(
                &client,
                common::request(http::Method::GET, &process_url, &[], common::full("")),
            )
            .await
        });
        let mut c = redis.connection().await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held: Option<String> = redis::cmd("GET")
                .arg("atomgit-proxy:{user:alice}:lock")
                .query_async(&mut c)
                .await
                .expect("GET the lock");
            if held.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the process never took the lock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        process.start_kill().expect("SIGKILL the replica");
        let _ = process.wait().await;
        let killed = Instant::now();
        fake.set_oauth_delay(None);
        assert!(
            hanging.await.expect("the hanging request").is_err(),
            "the killed replica answered"
        );
        let reply = fleet.get(0, "/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let lease = atomgit_proxy::store::redis::LOCK_LEASE;
        let waited = killed.elapsed();
        assert!(
            waited <= lease + Duration::from_secs(3),
            "served {waited:?} after the kill"
        );
        assert_eq!(fake.expired_tokens_seen(), 0);
        fleet.shutdown().await;
    })
    .await;
}
