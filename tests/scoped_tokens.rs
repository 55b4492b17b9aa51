//! Scoped installation tokens: the mint asks for the route's repositories
//! and permissions, tokens are cached per scope, and a platform that hands
//! out a broader token than asked gets it refused (fail closed).

mod common;

use common::{TestEnv, bounded, single_bearer};
use http::StatusCode;
use serde_json::json;

const ROUTES: &str = "
- name: docs-readonly
  match: { path_prefix: /repos/yanqianyu, methods: [GET] }
  installation: { account: yanqianyu, repositories: [docs], permissions: { contents: read } }
- name: docs-and-wiki
  match: { path_prefix: /orgs/yanqianyu/scoped }
  installation: { id: 14, repositories: [wiki, Docs], permissions: { contents: write, issues: read } }
- name: whole
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
";

#[tokio::test]
async fn the_mint_carries_the_scope_and_the_token_works_inside_it() {
    bounded(60, "scoped mint", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        let reply = env.get("/repos/yanqianyu/docs/contents/README.md").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            env.fake.mint_bodies(),
            [json!({"repositories": ["docs"], "permissions": {"contents": "read"}})]
        );
        let token = single_bearer(
            &env.last_api_request("/repos/yanqianyu/docs/contents/README.md")
                .headers,
        );
        assert_eq!(
            env.fake.token_repositories(&token),
            Some(vec!["docs".to_owned()])
        );
        // Outside its repositories the platform refuses the token.
        let outside = env.get("/repos/yanqianyu/secrets/contents/key").await;
        assert_eq!(outside.status, StatusCode::NOT_FOUND);
        assert!(outside.header("x-atomgit-proxy-error").is_none());
        assert_eq!(env.fake.mints_for(14), 1, "the scoped token is reused");
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_platform_that_ignores_the_scope_gets_its_token_refused() {
    bounded(60, "scope ignored", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        env.fake.set_ignore_scope(true);
        let reply = env.get("/repos/yanqianyu/docs/contents/README.md").await;
        reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("did not honour the token scope"),
            "{message}"
        );
        assert_eq!(env.fake.mints_for(14), 1, "a token was minted");
        assert!(
            env.fake.api_requests().is_empty(),
            "the broad token never reached the API"
        );
        common::assert_no_secret(&reply.text());
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn two_scopes_on_one_installation_are_two_tokens() {
    bounded(60, "two scopes", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        assert_eq!(env.get("/repos/yanqianyu/docs/a").await.status, StatusCode::OK);
        assert_eq!(env.get("/orgs/yanqianyu/scoped/b").await.status, StatusCode::OK);
        assert_eq!(env.get("/orgs/yanqianyu/c").await.status, StatusCode::OK);
        assert_eq!(env.get("/orgs/yanqianyu/scoped/d").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 3, "one token per scope, the unscoped one too");
        let tokens: Vec<String> = ["/repos/yanqianyu/docs/a", "/orgs/yanqianyu/scoped/b", "/orgs/yanqianyu/c"]
            .iter()
            .map(|p| single_bearer(&env.last_api_request(p).headers))
            .collect();
        assert_ne!(tokens[0], tokens[1]);
        assert_ne!(tokens[1], tokens[2]);
        assert_eq!(
            single_bearer(&env.last_api_request("/orgs/yanqianyu/scoped/d").headers),
            tokens[1]
        );
        assert_eq!(env.fake.token_repositories(&tokens[2]), None);
        assert_eq!(
            env.fake.mint_bodies()[1],
            json!({"repositories": ["docs", "wiki"], "permissions": {"contents": "write", "issues": "read"}})
        );
        env.shutdown().await;
    })
    .await;
}

#[test]
fn a_bad_scope_names_its_fields() {
    let routes = "
- name: a
  match: { path_prefix: /a }
  installation: { account: x, repositories: [owner/name, ''], permissions: { contents: admin } }
- name: b
  match: { path_prefix: /b }
  installation: { id: 1, account: x }
- name: c
  match: { path_prefix: /c }
  installation: { id: 1, repositories: [] }
";
    let yaml = common::config_yaml("http://127.0.0.1:1", &common::inline_key(), "", routes);
    let err = atomgit_proxy::config::Config::from_yaml(&yaml, std::path::Path::new("."), "t")
        .unwrap_err()
        .to_string();
    for field in [
        "routes[0] (a).installation.repositories[0]",
        "routes[0] (a).installation.repositories[1]",
        "routes[0] (a).installation.permissions.contents: expected read or write",
        "routes[1] (b).installation: needs exactly one of",
        "routes[2] (c).installation.repositories: is empty",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
}
