//! `audit: true`: one JSON line per forwarded request on the `audit` log
//! target, naming the client, route, credential, method, path, status,
//! timing, sizes and quota, and never a query string, key or token.
//!
//! The log is captured by a global subscriber, hence one test in this binary.

mod common;

use common::{TestEnv, bounded};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEY: &str = "ci-key-0123456789abcdef";
const ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
";

/// The audit lines, parsed.
fn audit_lines(log: &Captured) -> Vec<Value> {
    log.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_name_each_forwarded_request_without_query_or_secrets() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::Targets::new().with_target("audit", tracing::Level::INFO))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(move || writer.clone()),
        );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    bounded(60, "audit", async {
        let extra =
            format!("audit: true\nclients:\n  - name: ci\n    key: {{ value: \"{KEY}\" }}\n");
        let env = TestEnv::start_with(common::EnvOptions {
            routes: ROUTES,
            installations: &[(14, "yanqianyu"), (18, "hanshu")],
            extra_yaml: &extra,
            ..Default::default()
        })
        .await;
        let auth = format!("Bearer {KEY}");
        let headers = [("authorization", auth.as_str())];
        let a = env
            .request(
                http::Method::GET,
                "/orgs/yanqianyu/repos?access_token=SECRETQ&page=2",
                &headers,
                "",
            )
            .await;
        let b = env
            .request(
                http::Method::POST,
                "/repos/hanshu/x/issues?state=open",
                &headers,
                "{\"title\":\"t\"}",
            )
            .await;
        // Refused before any route: not forwarded, not audited.
        env.request(http::Method::GET, "/orgs/yanqianyu", &[], "")
            .await;
        env.get("/_proxy/healthz").await;

        let lines = audit_lines(&log);
        assert_eq!(lines.len(), 2, "{:#?}", log.lines());
        let (first, second) = (&lines[0], &lines[1]);
        assert_eq!(first["client"], "ci");
        assert_eq!(first["route"], "yanqianyu");
        assert_eq!(first["credential"], "installation:14");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/orgs/yanqianyu/repos");
        assert_eq!(first["status"], a.status.as_u16());
        assert!(first["upstream_ms"].is_u64(), "{first}");
        assert!(
            first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{first}"
        );
        for field in ["request_bytes", "response_bytes", "quota_remaining"] {
            // Present in every line; null where the exchange did not state it.
            assert!(
                first.get(field).is_some() || first[field].is_null(),
                "{field}: {first}"
            );
        }
        assert_eq!(second["route"], "repos");
        assert_eq!(
            second["credential"], "installation:18",
            "auto resolved to the id"
        );
        assert_eq!(second["method"], "POST");
        assert_eq!(second["path"], "/repos/hanshu/x/issues");
        assert_eq!(second["status"], b.status.as_u16());
        assert_eq!(second["request_bytes"], 13);

        for line in log.lines() {
            for secret in [
                "SECRETQ",
                "page=2",
                "state=open",
                "?",
                KEY,
                "ats_",
                "Bearer",
            ] {
                assert!(!line.contains(secret), "{secret} in {line}");
            }
        }
        env.shutdown().await;
    })
    .await;
}
