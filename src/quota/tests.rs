//! The quota's waiting, giving back and refusing, on the local backend.
use super::*;
use crate::config::{AppFingerprint, Secret};
use std::time::Duration;
use tokio::time::Instant;

fn key() -> CacheKey {
    installation(14)
}

fn installation(id: u64) -> CacheKey {
    CacheKey::Installation {
        app: AppFingerprint::of(75, "http://x", &Secret::new("k")),
        id,
        scope: None,
    }
}

fn metrics() -> QuotaMetrics {
    QuotaMetrics::register(&mut prometheus_client::registry::Registry::default())
}

const RATE: Rate = Rate {
    per_second: 10,
    burst: 1,
    max_wait: Duration::from_secs(1),
};

#[tokio::test(start_paused = true)]
async fn waiters_go_in_arrival_order_one_slot_apart() {
    let quota = Arc::new(Quota::default());
    let metrics = Arc::new(metrics());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5u32 {
        let (quota, metrics) = (quota.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
            (i, started.elapsed())
        }));
        // Arrival order is the spawn order.
        tokio::task::yield_now().await;
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let (i, waited) = task.await.unwrap();
        assert_eq!(i as usize, n);
        assert_eq!(waited, Duration::from_millis(100) * i);
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_hangs_up_gives_its_slot_back() {
    let quota = Quota::default();
    let metrics = metrics();
    let started = Instant::now();
    quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
    // The second waits 100ms for its slot; it is dropped after 10ms.
    let gone = tokio::time::timeout(
        Duration::from_millis(10),
        quota.wait_turn(&key(), Some(RATE), &metrics),
    )
    .await;
    assert!(gone.is_err(), "still waiting when dropped");
    // The next one takes the slot it left: at 100ms, not 200ms.
    quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn past_max_wait_is_refused_with_the_time_to_a_free_slot() {
    let quota = Arc::new(Quota::default());
    let metrics = Arc::new(metrics());
    let rate = Rate {
        max_wait: Duration::from_millis(150),
        ..RATE
    };
    // Slots at 0 and 100ms, held by waiters that stay.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let (quota, metrics) = (quota.clone(), metrics.clone());
        waiting.push(tokio::spawn(async move {
            quota.wait_turn(&key(), Some(rate), &metrics).await
        }));
        tokio::task::yield_now().await;
    }
    let refused = quota
        .wait_turn(&key(), Some(rate), &metrics)
        .await
        .unwrap_err();
    assert_eq!(refused.reason, RejectReason::MaxWait);
    assert_eq!(refused.retry_after, Duration::from_millis(200));
    for w in waiting {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn a_spent_budget_is_refused_with_its_last_values() {
    let quota = Quota::default();
    let metrics = metrics();
    let reset = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let mut h = HeaderMap::new();
    h.insert(budget::LIMIT, 5000.into());
    h.insert(budget::REMAINING, 0.into());
    h.insert(budget::RESET, reset.into());
    quota.record(&key(), StatusCode::OK, &h, &metrics).await;
    let refused = quota.check_budget(&key(), &metrics).await.unwrap_err();
    assert_eq!(refused.reason, RejectReason::Budget);
    assert!(refused.retry_after <= Duration::from_secs(60));
    assert_eq!(refused.last.unwrap().remaining, Some(0));
    let shown = quota.snapshot();
    assert_eq!(shown[0].credential, "installation:14");
    assert!(shown[0].blocked_for_secs.is_some());
}

fn encoded(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

fn ratelimit(remaining: &str, limit: Option<&str>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-ratelimit-remaining", remaining.parse().unwrap());
    headers.insert("x-ratelimit-reset", "4000000000".parse().unwrap());
    if let Some(limit) = limit {
        headers.insert("x-ratelimit-limit", limit.parse().unwrap());
    }
    headers
}

/// The gauges a thread keeps at hand are its instance's own, follow every
/// answer, and a value the platform never reported is not exported.
#[tokio::test]
async fn budget_gauges_follow_each_answer_per_instance() {
    let other = installation(15);
    let (mut first_registry, mut second_registry) = Default::default();
    let first = QuotaMetrics::register(&mut first_registry);
    let second = QuotaMetrics::register(&mut second_registry);
    let quota = Quota::default();
    let ok = http::StatusCode::OK;
    quota
        .record(&key(), ok, &ratelimit("40", None), &first)
        .await;
    quota
        .record(&key(), ok, &ratelimit("39", None), &first)
        .await;
    quota
        .record(&other, ok, &ratelimit("7", Some("50")), &first)
        .await;
    quota
        .record(&key(), ok, &ratelimit("3", Some("60")), &second)
        .await;
    // More credentials than a thread keeps: the first is made again.
    for id in 100..110 {
        let key = installation(id);
        quota.record(&key, ok, &ratelimit("1", None), &first).await;
    }
    quota
        .record(&key(), ok, &ratelimit("38", None), &first)
        .await;

    let first = encoded(&first_registry);
    for line in [
        r#"ratelimit_remaining{credential="installation:14"} 38"#,
        r#"ratelimit_remaining{credential="installation:15"} 7"#,
        r#"ratelimit_limit{credential="installation:15"} 50"#,
        r#"ratelimit_remaining{credential="installation:109"} 1"#,
    ] {
        assert!(first.contains(line), "{line} in {first}");
    }
    assert!(
        !first.contains(r#"ratelimit_limit{credential="installation:14"}"#),
        "never reported: {first}"
    );
    let second = encoded(&second_registry);
    for line in [
        r#"ratelimit_remaining{credential="installation:14"} 3"#,
        r#"ratelimit_limit{credential="installation:14"} 60"#,
    ] {
        assert!(second.contains(line), "{line} in {second}");
    }
    assert!(!second.contains("installation:15"), "{second}");
}
