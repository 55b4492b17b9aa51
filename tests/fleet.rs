//! Fleet mode: replicas sharing their state in a real `redis-server`.
//!
//! Every test starts its own Redis on a free loopback port and several
//! proxies in this process, each with its own `Shared`, so whatever they
//! agree on went through Redis.

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
async fn three_replicas_mint_a_cold_installation_token_once() {
    bounded(60, "90 cold requests on three replicas", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        let mut tasks = Vec::new();
        for i in 0..90 {
            let url = fleet.url(i % 3, "/orgs/yanqianyu");
            let client = fleet.client.clone();
            tasks.push(tokio::spawn(async move {
                common::get(&client, &url, &[]).await
            }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            let reply = t.await.expect("a request task");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        for r in fake.api_requests() {
            tokens.insert(common::single_bearer(&r.headers));
        }
        assert_eq!(fake.mints_for(14), 1, "the fleet minted once");
        assert_eq!(tokens.len(), 1, "every replica used the one token");
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn rotating_short_user_tokens_under_load_on_three_replicas() {
    bounded(90, "15 s of load with 3 s user tokens", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(Duration::from_secs(3)), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        log_in_across(&fleet, &fake, 0).await;
        let end = Instant::now() + Duration::from_secs(15);
        let mut tasks = Vec::new();
        for worker in 0..9 {
            let url = fleet.url(worker % 3, "/as/alice/user");
            let client = fleet.client.clone();
            tasks.push(tokio::spawn(async move {
                let mut served = 0;
                while Instant::now() < end {
                    let reply = common::get(&client, &url, &[]).await;
                    assert_eq!(reply.status, StatusCode::OK, "{url}: {}", reply.text());
                    served += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                served
            }));
        }
        let mut served = 0;
        for t in tasks {
            served += t.await.expect("a load task");
        }
        assert!(served > 100, "{served} requests served");
        assert_eq!(fake.refused_refreshes(), 0, "no refresh token spent twice");
        assert_eq!(fake.expired_tokens_seen(), 0, "no expired token sent");
        // 15 s of 3 s tokens refreshed at half-life: about ten, once each.
        let refreshes = fake.refreshes();
        assert!(
            (4..=15).contains(&refreshes),
            "{refreshes} refreshes in 15 s of 3 s tokens (one per half-life for the fleet)"
        );
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_login_started_on_a_calls_back_on_b_serves_on_c_and_its_link_works_once() {
    bounded(60, "login across replicas", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(3, &fake, &redis.url(), PREFIX).await;
        let link = log_in_across(&fleet, &fake, 0).await;
        let reply = fleet.get(2, "/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["login"], "alice");
        // The link is used up for the whole fleet.
        for i in 0..3 {
            let again = link.replace(
                &fleet.replicas[0].addr.to_string(),
                &fleet.replicas[i].addr.to_string(),
            );
            let reply = common::get(&fleet.client, &again, &[("accept", "text/html")]).await;
            assert_eq!(
                reply.status,
                StatusCode::GONE,
                "replica {i}: {}",
                reply.text()
            );
            assert!(reply.text().contains("already used"), "{}", reply.text());
        }
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn nothing_in_redis_is_a_usable_secret() {
    bounded(60, "scan every Redis value", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(2, &fake, &redis.url(), PREFIX).await;
        log_in_across(&fleet, &fake, 0).await;
        assert_eq!(fleet.get(0, "/as/alice/user").await.status, StatusCode::OK);
        assert_eq!(fleet.get(1, "/orgs/yanqianyu").await.status, StatusCode::OK);
        let dump = redis.dump().await;
        let keys: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.contains(&"atomgit-proxy:{user:alice}:grant"),
            "{keys:?}"
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("atomgit-proxy:{inst:") && k.ends_with(":14}:token")),
            "{keys:?}"
        );
        let secret = atomgit_fake::FakeOAuth::default().client_secret;
        for (key, values) in &dump {
            for value in values {
                for needle in ["ats_", "atu_", "refresh_", secret.as_str()] {
                    assert!(
                        !value.windows(needle.len()).any(|w| w == needle.as_bytes()),
                        "{key} holds `{needle}` in clear"
                    );
                }
            }
        }
        fleet.shutdown().await;
    })
    .await;
}

/// A replica process SIGKILLed while its refresh call hangs: its lock is
/// neither renewed nor released, and another replica serves the user once
/// the lease ran out. (Refresh tokens do not rotate here: whether the
/// platform finished the dead replica's refresh is beside the point.)
#[tokio::test]
async fn two_fleets_with_different_key_prefixes_stay_apart_on_one_redis() {
    bounded(60, "two fleets, one redis", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let a = Fleet::start(2, &fake, &redis.url(), "fleet-a:").await;
        let b = Fleet::start(2, &fake, &redis.url(), "fleet-b:").await;
        log_in_across(&a, &fake, 0).await;
        assert_eq!(a.get(1, "/as/alice/user").await.status, StatusCode::OK);
        b.get(0, "/as/alice/user")
            .await
            .assert_proxy_error(StatusCode::SERVICE_UNAVAILABLE, "grant_missing");
        assert_eq!(a.get(0, "/orgs/yanqianyu").await.status, StatusCode::OK);
        assert_eq!(b.get(1, "/orgs/yanqianyu").await.status, StatusCode::OK);
        assert_eq!(a.get(1, "/orgs/yanqianyu").await.status, StatusCode::OK);
        assert_eq!(fake.mints_for(14), 2, "one mint per fleet");
        for (key, _) in redis.dump().await {
            assert!(
                key.starts_with("fleet-a:") || key.starts_with("fleet-b:"),
                "{key}"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn store_import_then_list_with_the_binary() {
    bounded(90, "store import and list", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(1, &fake, &redis.url(), PREFIX).await;
        let config = fleet.config(0).to_str().expect("a UTF-8 path").to_owned();
        let file = fleet.dir.path().join("grants.json");
        let grants = |alice_updated: u64| {
            serde_json::json!({
                "version": 1,
                "grants": {
                    "alice": {
                        "access_token": "atu_imported_alice",
                        "access_expires_at_ms": now_ms() + 3_600_000,
                        "refresh_token": "refresh_imported_alice",
                        "refresh_expires_at_ms": null,
                        "updated_at_ms": alice_updated
                    },
                    "bob": {
                        "access_token": "atu_imported_bob",
                        "access_expires_at_ms": 1000,
                        "refresh_token": "refresh_imported_bob",
                        "refresh_expires_at_ms": null,
                        "revoked": "refused",
                        "updated_at_ms": 900
                    }
                }
            })
        };
        let now = now_ms();
        std::fs::write(&file, grants(now).to_string()).expect("write grants.json");
        let file_arg = file.to_str().expect("a UTF-8 path");
        let out = common::users::run_cli(&["store", "import", "-c", &config, file_arg]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("imported 2 grant(s)"), "{stdout}");
        // Again: nothing changes. An older file: nothing is overwritten.
        let out = common::users::run_cli(&["store", "import", "-c", &config, file_arg]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("imported 0 grant(s)") && stdout.contains("kept 2"),
            "{stdout}"
        );
        std::fs::write(&file, grants(now - 60_000).to_string()).expect("write grants.json");
        let out = common::users::run_cli(&["store", "import", "-c", &config, file_arg]).await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("imported 0 grant(s)"));

        let out = common::users::run_cli(&["store", "list", "-c", &config]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let alice = stdout
            .lines()
            .find(|l| l.starts_with("alice"))
            .expect("alice listed");
        assert!(alice.contains(" ok "), "{stdout}");
        let bob = stdout
            .lines()
            .find(|l| l.starts_with("bob"))
            .expect("bob listed");
        assert!(bob.contains("revoked"), "{stdout}");
        assert!(
            !stdout.contains("atu_") && !stdout.contains("refresh_"),
            "{stdout}"
        );
        // The imported grant is what the fleet now serves, with the newer
        // updated_at_ms kept.
        let reply = fleet.get(0, "/as/alice/user").await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "the fake never issued it"
        );
        let sent = fake
            .api_requests()
            .last()
            .map(|r| r.headers.clone())
            .expect("a request");
        assert_eq!(
            sent.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer atu_imported_alice")
        );
        fleet.shutdown().await;
    })
    .await;
}

#[test]
fn store_config_problems_name_their_field() {
    let base = std::path::Path::new(".");
    let yaml = |store: &str| {
        format!(
            "app: {{ id: 75, private_key: {} }}\nstore:\n{store}\nroutes: []\n",
            common::inline_key()
        )
    };
    let problems =
        |store: &str| match atomgit_proxy::config::Config::from_yaml(&yaml(store), base, "t") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
    let both = problems("  path: g.json\n  redis: { url: { value: \"redis://127.0.0.1:1\" } }");
    assert!(
        both.contains("store: has both `path` and `redis`"),
        "{both}"
    );
    let no_key = problems("  redis: { url: { value: \"redis://:pw@127.0.0.1:1\" } }");
    assert!(
        no_key.contains("store.encryption_key: is required"),
        "{no_key}"
    );
    let short = problems(
        "  redis: { url: { value: \"redis://127.0.0.1:1\" } }\n  encryption_key: { value: \"c2hvcnQ=\" }",
    );
    assert!(
        short.contains("store.encryption_key: expected 32 random bytes"),
        "{short}"
    );
    let bad_url = problems(&format!(
        "  redis: {{ url: {{ value: \"http://:hunter2@x\" }} }}\n  encryption_key: {{ value: \"{}\" }}",
        common::fleet::ENCRYPTION_KEY
    ));
    assert!(bad_url.contains("store.redis.url"), "{bad_url}");
    assert!(
        !bad_url.contains("hunter2"),
        "the URL's password is never shown"
    );
    let good = problems(&format!(
        "  redis: {{ url: {{ value: \"rediss://:pw@127.0.0.1:1/2\" }}, key_prefix: \"a:\" }}\n  encryption_key: {{ value: \"{}\" }}",
        common::fleet::ENCRYPTION_KEY
    ));
    assert_eq!(good, "", "a valid redis store");
    let config = atomgit_proxy::config::Config::from_yaml(
        &yaml(&format!(
            "  redis: {{ url: {{ value: \"rediss://:hunter2@127.0.0.1:1/2\" }} }}\n  encryption_key: {{ value: \"{}\" }}",
            common::fleet::ENCRYPTION_KEY
        )),
        base,
        "t",
    )
    .expect("a valid config");
    let summary = config.summary();
    assert!(
        summary.contains("store:    redis rediss://127.0.0.1:1/2 (key prefix \"atomgit-proxy:\")"),
        "{summary}"
    );
    assert!(!summary.contains("hunter2") && !format!("{config:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_refused_shared_token_is_replaced_once_for_the_fleet() {
    bounded(60, "401 with a shared installation token", async {
        let redis = RedisServer::start().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let fleet = Fleet::start(2, &fake, &redis.url(), PREFIX).await;
        let first = fleet.get(0, "/orgs/yanqianyu").await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        assert_eq!(fake.mints_for(14), 1);
        fake.revoke_all_tokens();
        // Replica 1 finds the revoked token in Redis, is refused, and must
        // mint a new one rather than adopt the refused one again.
        let healed = fleet.get(1, "/orgs/yanqianyu").await;
        assert_eq!(healed.status, StatusCode::OK, "{}", healed.text());
        assert_eq!(fake.mints_for(14), 2, "one re-mint");
        // Replica 0 still holds the old token: refused, it adopts the new
        // shared one instead of minting a third.
        let adopted = fleet.get(0, "/orgs/yanqianyu").await;
        assert_eq!(adopted.status, StatusCode::OK, "{}", adopted.text());
        assert_eq!(fake.mints_for(14), 2, "the fleet re-minted once");
        fleet.shutdown().await;
    })
    .await;
}
