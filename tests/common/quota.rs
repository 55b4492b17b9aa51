//! The quota tests' yardstick: a fake that refuses a seventh request in one
//! second, and how many of the requests it received fell within one second.

use atomgit_fake::{FakeAtomGit, FakeRateLimit};
use std::time::Duration;
use tokio::time::Instant;

/// Makes the fake refuse a seventh request in one second (with an hour's
/// budget of 1000 that no such test spends).
pub fn allow_six_per_second(fake: &FakeAtomGit) {
    fake.set_rate_limit(FakeRateLimit {
        limit: 1000,
        window: Duration::from_secs(3600),
        per_second: Some(6),
    });
}

/// When the fake received each API request under `prefix`.
pub fn arrivals(fake: &FakeAtomGit, prefix: &str) -> Vec<Instant> {
    fake.api_requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .map(|r| r.at)
        .collect()
}

/// The most requests among `times` that fall within one second.
pub fn most_in_one_second(mut times: Vec<Instant>) -> usize {
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Asserts no second saw more than six of the fake's requests under `prefix`.
pub fn assert_at_most_six_per_second(fake: &FakeAtomGit, prefix: &str) {
    let most = most_in_one_second(arrivals(fake, prefix));
    assert!(
        most <= 6,
        "{most} requests reached the platform in one second"
    );
}
