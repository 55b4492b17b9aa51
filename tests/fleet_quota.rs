//! The fleet's quota: replicas sharing one bucket and one learned budget
//! per credential in a real `redis-server`; each process on its own when
//! Redis is away. The first tests drive the Redis backend (its Lua GCRA)
//! directly, as two replicas would; the others run whole fleets.

mod common;

use atomgit_fake::TokenOwner;
use atomgit_proxy::config::{AppFingerprint, Secret};
use atomgit_proxy::credentials::CacheKey;
use atomgit_proxy::quota::backend::{QuotaBackend, Refusal};
use atomgit_proxy::quota::redis_backend::{RedisBackend, shared_name};
use atomgit_proxy::quota::{Rate, RateLimit};
use atomgit_proxy::store::keys::Keys;
use atomgit_proxy::store::{StoreOpLabels, store_errors};
use common::fleet::{Fleet, start_fleet_fake};
use common::quota::{allow_six_per_second, arrivals, assert_at_most_six_per_second};
use common::redis::RedisServer;
use common::users::fake_oauth;
use common::{Reply, bounded};
use http::StatusCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
const PREFIX: &str = "atomgit-proxy:";

fn key(id: u64) -> CacheKey {
    CacheKey::Installation {
        app: AppFingerprint::of(75, "http://x", &Secret::new("k")),
        id,
        scope: None,
    }
}

async fn backend(redis: &RedisServer) -> RedisBackend {
    let conn = redis::Client::open(redis.url())
        .expect("a client")
        .get_connection_manager()
        .await
        .expect("connect to redis");
    RedisBackend::new(conn, Keys::new(PREFIX))
}

fn rate(per_second: u32, burst: u32, max_wait_ms: u64) -> Option<Rate> {
    Some(Rate {
        per_second,
        burst,
        max_wait: Duration::from_millis(max_wait_ms),
    })
}

/// `at - start` in ms, for a slot that must exist.
fn offset(
    slot: Result<Option<atomgit_proxy::quota::bucket::Slot>, Refusal>,
    start: Instant,
) -> u64 {
    let slot = slot.expect("a slot").expect("smoothing is on");
    slot.at.saturating_duration_since(start).as_millis() as u64
}

fn near(got: u64, want: u64) -> bool {
    // Redis's clock runs on between calls; a slot is never early.
    got + 5 >= want && got <= want + 60
}

#[tokio::test]
async fn two_backends_take_slots_from_one_shared_bucket() {
    bounded(20, "the shared GCRA", async {
        let redis = RedisServer::start().await;
        let (a, b) = (backend(&redis).await, backend(&redis).await);
        let r = rate(10, 2, 10_000);
        let start = Instant::now();
        let mut got = Vec::new();
        for i in 0..6 {
            let replica = if i % 2 == 0 { &a } else { &b };
            got.push(offset(replica.reserve(&key(14), r).await, start));
        }
        let want = [0, 0, 100, 200, 300, 400];
        for (g, w) in got.iter().zip(want) {
            assert!(near(*g, w), "slots {got:?}, expected about {want:?}");
        }
        // Another credential has its own bucket.
        assert!(near(offset(b.reserve(&key(15), r).await, start), 0));
        // The tat is one key under the prefix, with the credential's hash tag.
        let name = shared_name(&key(14));
        let keys: Vec<String> = redis.dump().await.into_iter().map(|(k, _)| k).collect();
        assert!(
            keys.contains(&format!("{PREFIX}{{quota:{name}}}:bucket")),
            "{keys:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn past_max_wait_the_shared_bucket_refuses_without_reserving() {
    bounded(20, "max_wait in Lua", async {
        let redis = RedisServer::start().await;
        let (a, b) = (backend(&redis).await, backend(&redis).await);
        let r = rate(10, 1, 150);
        let start = Instant::now();
        assert!(near(offset(a.reserve(&key(14), r).await, start), 0));
        assert!(near(offset(b.reserve(&key(14), r).await, start), 100));
        for replica in [&a, &b] {
            match replica.reserve(&key(14), r).await {
                Err(Refusal::Full(short)) => {
                    assert!(short <= Duration::from_millis(50), "{short:?}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // Nothing was reserved by the refusals: the next slot is at 200ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(near(offset(a.reserve(&key(14), r).await, start), 200));
    })
    .await;
}

#[tokio::test]
async fn a_slot_given_back_goes_to_the_next_replica() {
    bounded(20, "give_back in Lua", async {
        let redis = RedisServer::start().await;
        let (a, b) = (backend(&redis).await, backend(&redis).await);
        let r = rate(10, 1, 10_000);
        let start = Instant::now();
        a.reserve(&key(14), r)
            .await
            .expect("first")
            .expect("a slot");
        let second = a.reserve(&key(14), r).await.expect("second");
        let second = second.expect("a slot");
        assert!(near(
            second.at.duration_since(start).as_millis() as u64,
            100
        ));
        let bucket = format!("{PREFIX}{{quota:{}}}:bucket", shared_name(&key(14)));
        let mut c = redis.connection().await.expect("connect");
        let before: u64 = redis::cmd("GET")
            .arg(&bucket)
            .query_async(&mut c)
            .await
            .unwrap();
        a.give_back(&key(14), r.unwrap(), second);
        // Sent in the background: wait until it lands.
        for _ in 0..100 {
            let now: u64 = redis::cmd("GET")
                .arg(&bucket)
                .query_async(&mut c)
                .await
                .unwrap();
            if now != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(near(offset(b.reserve(&key(14), r).await, start), 100));
    })
    .await;
}

#[tokio::test]
async fn a_budget_spent_on_one_replica_blocks_the_other_in_its_reserve() {
    bounded(20, "the shared budget", async {
        let redis = RedisServer::start().await;
        let (a, b) = (backend(&redis).await, backend(&redis).await);
        assert!(matches!(b.reserve(&key(14), None).await, Ok(None)));
        assert!(b.blocked(&key(14)).is_none());
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let spent = RateLimit {
            limit: Some(5000),
            remaining: Some(0),
            used: Some(5000),
            reset: Some(reset),
        };
        a.record(&key(14), StatusCode::OK, Some(spent), None).await;
        // B asks Redis on its next request, smoothing on or off.
        for r in [None, rate(10, 1, 1000)] {
            match b.reserve(&key(14), r).await {
                Err(Refusal::Blocked(blocked)) => {
                    assert!(blocked.for_ > Duration::from_secs(55), "{blocked:?}");
                    assert_eq!(blocked.last, Some(spent));
                }
                other => panic!("expected blocked, got {other:?}"),
            }
        }
        // ... and then knows it without asking.
        assert!(b.blocked(&key(14)).is_some());
        assert!(
            b.budgets()
                .iter()
                .any(|(k, bud)| *k == key(14) && bud.last == Some(spent))
        );
        // Another credential is not held back.
        assert!(matches!(b.reserve(&key(15), None).await, Ok(None)));
        // The budget hash expires at the reset.
        let budget = format!("{PREFIX}{{quota:{}}}:budget", shared_name(&key(14)));
        let mut c = redis.connection().await.expect("connect");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&budget)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((55_000..=61_000).contains(&ttl), "PTTL {ttl}");
    })
    .await;
}

/// `reserve` refuses whatever `blocked` would, without asking Redis: the
/// proxy then checks the budget once on a request with nothing between
/// the check and the reservation.
#[tokio::test]
async fn reserve_refuses_what_the_replica_already_knows_without_asking() {
    bounded(20, "the replica's own knowledge", async {
        let redis = RedisServer::start().await;
        let (a, b) = (backend(&redis).await, backend(&redis).await);
        a.record(
            &key(14),
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(Duration::from_secs(30)),
        )
        .await;
        let known = a.blocked(&key(14)).expect("A learned it");
        // Redis forgets: only what A knows itself can refuse now.
        let mut c = redis.connection().await.expect("connect");
        let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        for r in [None, rate(10, 1, 1000)] {
            match a.reserve(&key(14), r).await {
                Err(Refusal::Blocked(blocked)) => {
                    assert!(blocked.for_ <= known.for_, "{blocked:?}");
                    assert!(blocked.for_ > Duration::from_secs(25), "{blocked:?}");
                }
                other => panic!("expected blocked, got {other:?}"),
            }
        }
        // B never learned it, and Redis no longer holds it.
        assert!(matches!(b.reserve(&key(14), None).await, Ok(None)));
    })
    .await;
}

#[tokio::test]
async fn with_redis_down_the_backend_keeps_a_local_bucket_and_counts_errors() {
    bounded(20, "Redis down", async {
        let mut redis = RedisServer::start().await;
        let a = backend(&redis).await;
        redis.kill(false).await;
        let errors = || {
            store_errors()
                .get_or_create(&StoreOpLabels {
                    op: "quota_reserve",
                })
                .get()
        };
        let before = errors();
        let r = rate(10, 1, 10_000);
        let start = Instant::now();
        let first = offset(a.reserve(&key(14), r).await, start);
        let second = offset(a.reserve(&key(14), r).await, start);
        assert!(first < 600, "the first goes at once ({first}ms)");
        assert!(
            second >= first + 95,
            "spaced locally: {first}ms, {second}ms"
        );
        assert!(errors() > before, "the failure is counted");
    })
    .await;
}

async fn spread(fleet: &Fleet, n: usize) -> Vec<Reply> {
    futures_util::future::join_all((0..n).map(|i| {
        let url = fleet.url(i % fleet.replicas.len(), &format!("/orgs/yanqianyu/r{i}"));
        let client = fleet.client.clone();
        async move { common::get(&client, &url, &[]).await }
    }))
    .await
}

#[tokio::test]
async fn three_replicas_share_one_bucket_per_credential() {
    bounded(60, "30 requests on three replicas at 5 per second", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let quota = "quota: { per_second: 5, burst: 1, max_wait: 20s }";
        let fleet = Fleet::start_with(3, &fake, &redis.url(), PREFIX, quota).await;
        // The platform refuses a seventh request in one second.
        allow_six_per_second(&fake);
        for r in spread(&fleet, 30).await {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        assert_at_most_six_per_second(&fake, "/orgs/yanqianyu");
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_budget_spent_as_seen_by_one_replica_is_answered_locally_by_the_others() {
    bounded(30, "a budget spent across the fleet", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        for i in 0..3 {
            let reply = fleet.get(i, "/orgs/yanqianyu/warm").await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        fake.exhaust_budget(&TokenOwner::Installation(14));
        let first = fleet.get(0, "/orgs/yanqianyu/a").await;
        assert_eq!(first.status, StatusCode::FORBIDDEN, "{}", first.text());
        let seen = arrivals(&fake, "/orgs/yanqianyu").len();
        for i in [1, 2, 1] {
            let reply = fleet.get(i, "/orgs/yanqianyu/b").await;
            reply.assert_proxy_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            let wait: u64 = reply
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap();
            assert!(wait > 3000, "the fake's window is an hour: {wait}");
            assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
        }
        assert_eq!(
            arrivals(&fake, "/orgs/yanqianyu").len(),
            seen,
            "no request reached the platform"
        );
        // Another installation is unaffected.
        assert_eq!(fleet.get(1, "/orgs/other/x").await.status, StatusCode::OK);
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_redis_down_each_replica_still_spaces_its_own_requests() {
    bounded(60, "quota without Redis", async {
        let mut redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let quota = "quota: { per_second: 5, burst: 1, max_wait: 20s }";
        let fleet = Fleet::start_with(1, &fake, &redis.url(), PREFIX, quota).await;
        // The token is fetched while Redis is up (a token fetch waiting on
        // Redis's timeouts is not what this test is about).
        let warm = fleet.get(0, "/orgs/yanqianyu/warm").await;
        assert_eq!(warm.status, StatusCode::OK, "{}", warm.text());
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.kill(false).await;
        allow_six_per_second(&fake);
        for r in spread(&fleet, 12).await {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        assert_at_most_six_per_second(&fake, "/orgs/yanqianyu");
        let metrics = fleet.get(0, "/_proxy/metrics").await.text();
        assert!(
            metrics.contains(r#"atomgit_proxy_store_errors_total{op="quota_reserve"}"#),
            "{metrics}"
        );
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_onto_redis_moves_the_quota_there() {
    bounded(30, "the quota follows the store", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(1, &fake, &redis.url(), PREFIX).await;
        let config = atomgit_proxy::config::Config::load(fleet.config(0)).expect("a config");
        let snap = atomgit_proxy::state::Snapshot::build(config, None).expect("a snapshot");
        let metrics = atomgit_proxy::quota::metrics::QuotaMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
        );
        // Another replica saw the budget spent.
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let spent = RateLimit {
            remaining: Some(0),
            reset: Some(reset),
            ..RateLimit::default()
        };
        let other = backend(&redis).await;
        other
            .record(&key(14), StatusCode::OK, Some(spent), None)
            .await;
        // Started without store.redis: this process knows nothing of it.
        let quota = atomgit_proxy::quota::Quota::default();
        assert!(quota.wait_turn(&key(14), None, &metrics).await.is_ok());
        // A reload onto the Redis store: the fleet's budget applies.
        quota.follow(&snap);
        let refused = quota.wait_turn(&key(14), None, &metrics).await;
        assert!(refused.is_err(), "the shared budget is spent");
        // Following the same store again keeps what was learned.
        quota.follow(&snap);
        assert!(quota.check_budget(&key(14), &metrics).await.is_err());
        fleet.shutdown().await;
    })
    .await;
}
