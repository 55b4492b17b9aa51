//! The quota's waiting, giving back and refusing, on the local backend.
use super::*;
use crate::config::{AppFingerprint, Secret};
use std::time::Duration;
use tokio::time::Instant;

fn key() -> CacheKey {
    CacheKey::Installation {
        app: AppFingerprint::of(75, "http://x", &Secret::new("k")),
        id: 14,
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
