//! `/_proxy/readyz`: plain readiness does not follow one credential's state
//! (so a platform outage cannot pull every replica out of service),
//! `?strict=1` does, the probe answers within its bound, and with `clients:`
//! only a caller with a key sees the detail.

mod common;

use common::{EnvOptions, TestEnv, bounded, credential, dead_port};
use http::{Method, StatusCode};
use std::time::Duration;

const ROUTES: &str = r#"
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
"#;
const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu")];

const OPS_KEY: &str = "ops-key-0123456789abcdef";
const CLIENTS: &str = r#"
clients:
  - name: ops
    key: { value: "ops-key-0123456789abcdef" }
"#;

async fn env_with(upstream: Option<String>, extra_yaml: &str) -> TestEnv {
    TestEnv::start_with(EnvOptions {
        routes: ROUTES,
        installations: INSTALLATIONS,
        extra_yaml,
        upstream,
        ..EnvOptions::default()
    })
    .await
}

fn dead_upstream() -> Option<String> {
    Some(format!("http://127.0.0.1:{}", dead_port()))
}

#[tokio::test]
async fn a_platform_outage_keeps_plain_readyz_200_and_strict_readyz_503() {
    bounded(60, "readyz with a dead upstream", async {
        let env = env_with(dead_upstream(), "").await;

        let reply = env.get("/_proxy/readyz").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ready"], true, "{json}");
        assert_eq!(json["credentials_ready"], false, "{json}");
        assert_eq!(json["config"]["loaded"], true, "{json}");
        for route in ["yanqianyu", "repos"] {
            let c = credential(&json, route);
            assert_eq!(c["ready"], false, "{json}");
            assert_eq!(c["error"], "token_endpoint_failed", "{json}");
            assert!(c["reason"].is_string(), "{json}");
        }
        common::assert_no_secret(&reply.text());

        for query in ["?strict=1", "?strict=true", "?strict"] {
            let strict = env.get(&format!("/_proxy/readyz{query}")).await;
            assert_eq!(
                strict.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{query}: {}",
                strict.text()
            );
            let json = strict.json();
            assert_eq!(json["ready"], false, "{json}");
            assert_eq!(credential(&json, "yanqianyu")["ready"], false, "{json}");
        }
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn strict_readyz_is_200_when_every_credential_works() {
    bounded(60, "strict readyz ready", async {
        let env = env_with(None, "").await;
        let reply = env.get("/_proxy/readyz?strict=1").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ready"], true, "{json}");
        assert_eq!(json["credentials_ready"], true, "{json}");
        for route in ["yanqianyu", "repos"] {
            assert_eq!(credential(&json, route)["ready"], true, "{json}");
        }
        let plain = env.get("/_proxy/readyz").await;
        assert_eq!(plain.status, StatusCode::OK);
        assert_eq!(plain.json()["credentials_ready"], true);
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_hanging_platform_does_not_hang_the_probe() {
    // Accepts connections and never answers (the response timeout is 60 s).
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", hang.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    bounded(30, "readyz with a hanging upstream", async {
        let env = env_with(Some(upstream), "").await;
        // Well under the 60 s the checks themselves could take.
        let reply = bounded(10, "the probe answers", env.get("/_proxy/readyz")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ready"], true, "{json}");
        assert_eq!(json["credentials_ready"], false, "{json}");
        let c = credential(&json, "yanqianyu");
        assert_eq!(c["ready"], false, "{json}");
        assert_eq!(c["pending"], true, "{json}");

        let strict = bounded(10, "the strict probe answers", async {
            env.get("/_proxy/readyz?strict=1").await
        })
        .await;
        assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE);
        env.shutdown().await;
    })
    .await;
    holder.abort();
}

#[tokio::test]
async fn with_clients_only_a_caller_with_a_key_sees_the_detail() {
    bounded(60, "readyz detail needs a key", async {
        let env = env_with(dead_upstream(), CLIENTS).await;

        let without_key: [&[(&str, &str)]; 2] = [&[], &[("authorization", "Bearer wrong-key")]];
        for headers in without_key {
            for (query, status, ready) in [
                ("", StatusCode::OK, true),
                ("?strict=1", StatusCode::SERVICE_UNAVAILABLE, false),
            ] {
                let reply = env
                    .request(Method::GET, &format!("/_proxy/readyz{query}"), headers, "")
                    .await;
                assert_eq!(
                    reply.status,
                    status,
                    "{query} {headers:?}: {}",
                    reply.text()
                );
                assert_eq!(
                    reply.json(),
                    serde_json::json!({ "ready": ready }),
                    "{query} {headers:?}: nothing but `ready`"
                );
                let text = reply.text();
                for secret in [
                    "yanqianyu",
                    "repos",
                    "installation",
                    "token_endpoint",
                    "error",
                ] {
                    assert!(
                        !text.contains(secret),
                        "{secret} shown without a key: {text}"
                    );
                }
            }
        }

        let auth = format!("Bearer {OPS_KEY}");
        let reply = env
            .request(
                Method::GET,
                "/_proxy/readyz",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ready"], true, "{json}");
        assert_eq!(json["credentials_ready"], false, "{json}");
        assert_eq!(
            credential(&json, "yanqianyu")["error"],
            "token_endpoint_failed",
            "{json}"
        );
        let strict = env
            .request(
                Method::GET,
                "/_proxy/readyz?strict=1",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(credential(&strict.json(), "repos")["ready"], false);
        env.shutdown().await;
    })
    .await
}

/// The plain probe without a key has nothing to check: it touches no
/// credential, so unauthenticated probes cannot make the proxy call the
/// platform.
#[tokio::test]
async fn a_plain_probe_without_a_key_calls_nothing() {
    bounded(60, "plain readyz calls nothing", async {
        let env = env_with(None, CLIENTS).await;
        for _ in 0..3 {
            assert_eq!(env.get("/_proxy/readyz").await.status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(env.fake.requests().is_empty(), "{:?}", env.fake.requests());
        env.shutdown().await;
    })
    .await
}
