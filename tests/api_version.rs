//! `api_version:`: sent as `X-Api-Version` on forwarded requests, the route's
//! over the top-level one, and a caller's own header passed through.

mod common;

use common::{EnvOptions, TestEnv, bounded};
use http::{Method, StatusCode};

const ROUTES: &str = "
- name: pinned
  match: { path_prefix: /orgs/yanqianyu/pinned }
  installation: { id: 14 }
  api_version: \"2024-01-01\"
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
";

fn version_sent(env: &TestEnv, path: &str) -> Vec<String> {
    env.last_api_request(path)
        .headers
        .get_all("x-api-version")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn api_version_is_sent_unless_the_caller_sends_one() {
    bounded(60, "api version", async {
        let env = TestEnv::start_with(EnvOptions {
            routes: ROUTES,
            installations: &[(14, "yanqianyu")],
            extra_yaml: "api_version: \"2023-02-21\"",
            ..EnvOptions::default()
        })
        .await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        assert_eq!(version_sent(&env, "/orgs/yanqianyu/a"), ["2023-02-21"]);
        // The route's own version wins over the top-level one.
        assert_eq!(
            env.get("/orgs/yanqianyu/pinned").await.status,
            StatusCode::OK
        );
        assert_eq!(version_sent(&env, "/orgs/yanqianyu/pinned"), ["2024-01-01"]);
        // The caller's own header passes through, not doubled nor replaced.
        let own = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/b",
                &[("x-api-version", "2022-01-01")],
                "",
            )
            .await;
        assert_eq!(own.status, StatusCode::OK);
        assert_eq!(version_sent(&env, "/orgs/yanqianyu/b"), ["2022-01-01"]);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn without_api_version_no_header_is_added() {
    bounded(60, "no api version", async {
        let env = TestEnv::start(
            "- name: y\n  match: { path_prefix: /orgs/yanqianyu }\n  installation: { id: 14 }\n",
            &[(14, "yanqianyu")],
        )
        .await;
        assert_eq!(env.get("/orgs/yanqianyu/a").await.status, StatusCode::OK);
        assert!(version_sent(&env, "/orgs/yanqianyu/a").is_empty());
        env.shutdown().await;
    })
    .await;
}

#[test]
fn a_bad_api_version_names_its_field_without_quoting_it() {
    let yaml = common::config_yaml(
        "http://127.0.0.1:1",
        &common::inline_key(),
        "api_version: \"has space\"",
        "- name: y\n  match: { path_prefix: /x }\n  installation: { id: 1 }\n  api_version: \"\"\n",
    );
    let err = atomgit_proxy::config::Config::from_yaml(&yaml, std::path::Path::new("."), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api_version: expected an API version"),
        "{err}"
    );
    assert!(err.contains("routes[0] (y).api_version"), "{err}");
    assert!(!err.contains("has space"), "{err}");
}
