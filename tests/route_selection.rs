//! Which route, and so which installation, a request is sent with: by id,
//! by account (case-insensitively), `auto` from the path's owner, whole-segment
//! prefixes, `methods`, `host` and `strip_prefix`.

mod common;

use atomgit_fake::TokenOwner;
use common::{EnvOptions, TestEnv, bounded};
use http::{Method, StatusCode};

const INSTALLATIONS: &[(u64, &str)] = &[(14, "yanqianyu"), (18, "hanshuorg2"), (21, "carol")];

#[tokio::test]
async fn installation_by_id_by_account_and_auto_from_the_path() {
    bounded(60, "route selection", async {
        let env = TestEnv::start(
            r#"
            - name: by-id
              match: { path_prefix: /as/id }
              strip_prefix: true
              installation: { id: 18 }
            - name: by-account
              match: { path_prefix: /as/account }
              strip_prefix: true
              installation: { account: YanQianYu }
            - name: repos
              match: { path_prefix: /repos }
              installation: auto
            - name: orgs
              match: { path_prefix: /orgs }
              installation: auto
            - name: users
              match: { path_prefix: /users }
              installation: auto
            "#,
            INSTALLATIONS,
        )
        .await;

        // (request path, path the fake receives, installation expected)
        let cases = [
            ("/as/id/orgs/hanshuorg2/info", "/orgs/hanshuorg2/info", 18),
            (
                "/as/account/orgs/yanqianyu/info",
                "/orgs/yanqianyu/info",
                14,
            ),
            ("/repos/hanshuorg2/demo", "/repos/hanshuorg2/demo", 18),
            (
                "/repos/HanshuOrg2/demo/issues",
                "/repos/HanshuOrg2/demo/issues",
                18,
            ),
            ("/orgs/yanqianyu/members", "/orgs/yanqianyu/members", 14),
            ("/users/carol/starred", "/users/carol/starred", 21),
        ];
        for (path, upstream_path, id) in cases {
            let reply = env.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
            assert_eq!(
                env.owner_of_last(upstream_path),
                TokenOwner::Installation(id),
                "{path}"
            );
            assert_eq!(
                reply.json()["owner"],
                format!("installation:{id}"),
                "{path}"
            );
        }
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn prefixes_match_whole_path_segments() {
    bounded(60, "whole-segment prefixes", async {
        let env = TestEnv::start(
            r#"
            - name: ab
              match: { path_prefix: /orgs/ab }
              installation: { id: 14 }
            "#,
            &[(14, "ab")],
        )
        .await;

        env.get("/orgs/abc")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        env.get("/orgs/abc/repos")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        assert!(
            env.fake.api_requests().is_empty(),
            "nothing unrouted may reach the upstream"
        );

        let exact = env.get("/orgs/ab").await;
        assert_eq!(exact.status, StatusCode::OK, "{}", exact.text());
        assert_eq!(env.owner_of_last("/orgs/ab"), TokenOwner::Installation(14));

        let below = env.get("/orgs/ab/repos").await;
        assert_eq!(below.status, StatusCode::OK, "{}", below.text());
        assert_eq!(below.json()[0]["full_name"], "ab/repo-1");
        assert_eq!(
            env.owner_of_last("/orgs/ab/repos"),
            TokenOwner::Installation(14)
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn methods_restrict_a_route_and_later_routes_take_the_rest() {
    bounded(60, "methods", async {
        let env = TestEnv::start(
            r#"
            - name: read
              match: { path_prefix: /things, methods: [GET] }
              installation: { id: 14 }
            - name: write
              match: { path_prefix: /things, methods: [post] }
              installation: { id: 18 }
            - name: read-only
              match: { path_prefix: /only-get, methods: [GET] }
              installation: { id: 14 }
            "#,
            INSTALLATIONS,
        )
        .await;

        let get = env.get("/things/a").await;
        assert_eq!(get.status, StatusCode::OK, "{}", get.text());
        assert_eq!(env.owner_of_last("/things/a"), TokenOwner::Installation(14));

        // The GET-only route refuses POST; the next route takes it.
        let post = env.request(Method::POST, "/things/b", &[], "payload").await;
        assert_eq!(post.status, StatusCode::OK, "{}", post.text());
        assert_eq!(post.json()["method"], "POST");
        assert_eq!(env.owner_of_last("/things/b"), TokenOwner::Installation(18));

        // No route admits PUT here, nor POST on the GET-only prefix.
        env.request(Method::PUT, "/things/c", &[], "")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        env.request(Method::POST, "/only-get/x", &[], "")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        let ok = env.get("/only-get/x").await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn host_matches_exactly_ignoring_the_port() {
    bounded(60, "host", async {
        let env = TestEnv::start_with(EnvOptions {
            routes: r#"
            - name: tools
              match: { path_prefix: /hosted, host: tools.local }
              installation: { id: 14 }
            "#,
            installations: INSTALLATIONS,
            // Served names (without clients, only known names are), so
            // that what is tested here is the route's host match.
            extra_yaml: "allowed_hosts: [other.local, tools.local.evil, sub.tools.local]",
            ..EnvOptions::default()
        })
        .await;

        for host in ["tools.local", "tools.local:9999", "Tools.Local:80"] {
            let reply = env
                .request(Method::GET, "/hosted/x", &[("host", host)], "")
                .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "Host {host}: {}",
                reply.text()
            );
            assert_eq!(env.owner_of_last("/hosted/x"), TokenOwner::Installation(14));
        }
        for host in ["other.local", "tools.local.evil", "sub.tools.local:9999"] {
            env.request(Method::GET, "/hosted/x", &[("host", host)], "")
                .await
                .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        }
        // The client's default Host is 127.0.0.1:PORT: not this route's host.
        env.get("/hosted/x")
            .await
            .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn strip_prefix_forwards_the_rest_of_the_path() {
    bounded(60, "strip_prefix", async {
        let env = TestEnv::start(
            r#"
            - name: as-x
              match: { path_prefix: /as/x }
              strip_prefix: true
              installation: { id: 14 }
            "#,
            &[(14, "o")],
        )
        .await;

        let reply = env.get("/as/x/orgs/o/repos?per_page=3").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()[0]["full_name"], "o/repo-1");
        let seen = env.last_api_request("/orgs/o/repos");
        assert_eq!(seen.query.as_deref(), Some("per_page=3"));
        assert!(
            env.fake
                .api_requests()
                .iter()
                .all(|r| !r.path.starts_with("/as/")),
            "the prefix must not reach the upstream"
        );

        // The bare prefix forwards as `/`.
        let root = env.get("/as/x").await;
        assert_eq!(root.status, StatusCode::OK, "{}", root.text());
        assert_eq!(root.json()["path"], "/");
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn dot_segments_cannot_escape_a_route() {
    let routes = "
- name: yanqianyu-only
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
";
    let env = TestEnv::start(routes, &[(14, "yanqianyu"), (18, "hanshuorg2")]).await;
    for path in [
        "/orgs/yanqianyu/../hanshuorg2/repos",
        "/orgs/yanqianyu/%2e%2e/hanshuorg2/repos",
        "/orgs/yanqianyu/./repos",
    ] {
        env.get(path)
            .await
            .assert_proxy_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    assert!(env.fake.api_requests().is_empty(), "nothing was forwarded");
    env.shutdown().await;
}
