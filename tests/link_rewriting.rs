//! `Link` and `Location` headers pointing at the upstream come back pointing
//! at the proxy address the caller used, so pagination keeps going through
//! the proxy; redirects are passed back, never followed.

mod common;

use common::{EnvOptions, TestEnv, bounded};
use http::{Method, StatusCode};

const ROUTES: &str = r#"
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: redirect
  match: { path_prefix: /redirect }
  installation: { id: 14 }
- name: as-yq
  match: { path_prefix: /as/yq }
  strip_prefix: true
  installation: { id: 14 }
"#;

/// The target of the `rel="{rel}"` entry of a `Link` header.
fn link_target(link: &str, rel: &str) -> String {
    link.split(',')
        .find(|part| part.contains(&format!("rel=\"{rel}\"")))
        .and_then(|part| {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            Some(part[start..end].to_owned())
        })
        .unwrap_or_else(|| panic!("no rel={rel} in Link: {link}"))
}

fn repo_names(reply: &common::Reply) -> Vec<String> {
    reply
        .json()
        .as_array()
        .expect("a JSON array of repos")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn pagination_links_point_back_at_the_proxy_and_can_be_followed() {
    bounded(60, "Link rewriting", async {
        // `proxy.internal` is a name callers use below; without clients a
        // name is served only when the config lists it.
        let env = TestEnv::start_with(EnvOptions {
            routes: ROUTES,
            installations: &[(14, "yanqianyu")],
            extra_yaml: "allowed_hosts: [proxy.internal]",
            ..EnvOptions::default()
        })
        .await;

        let page1 = env.get("/orgs/yanqianyu/repos").await;
        assert_eq!(page1.status, StatusCode::OK, "{}", page1.text());
        assert_eq!(repo_names(&page1), ["repo-1", "repo-2"]);
        let link = page1.headers["link"].to_str().expect("ASCII Link");
        assert!(!link.contains(&env.fake.url()), "upstream leaked: {link}");
        let next = link_target(link, "next");
        assert_eq!(
            next,
            env.url("/orgs/yanqianyu/repos?page=2&per_page=2"),
            "Link: {link}"
        );
        assert_eq!(
            link_target(link, "last"),
            env.url("/orgs/yanqianyu/repos?page=3&per_page=2")
        );

        // Following `next` as given goes through the proxy to page 2.
        let page2 = common::send(
            &env.client,
            common::request(Method::GET, &next, &[], common::full("")),
        )
        .await;
        assert_eq!(page2.status, StatusCode::OK, "{}", page2.text());
        assert_eq!(repo_names(&page2), ["repo-3", "repo-4"]);
        let seen = env.last_api_request("/orgs/yanqianyu/repos");
        assert_eq!(seen.query.as_deref(), Some("page=2&per_page=2"));
        let link2 = page2.headers["link"].to_str().expect("ASCII Link");
        assert_eq!(
            link_target(link2, "prev"),
            env.url("/orgs/yanqianyu/repos?page=1&per_page=2")
        );

        // The address the caller used is the one links point at.
        let named = env
            .request(
                Method::GET,
                "/orgs/yanqianyu/repos",
                &[("host", "proxy.internal:8443")],
                "",
            )
            .await;
        let link = named.headers["link"].to_str().expect("ASCII Link");
        assert_eq!(
            link_target(link, "next"),
            "http://proxy.internal:8443/orgs/yanqianyu/repos?page=2&per_page=2"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn redirects_are_rewritten_and_not_followed() {
    bounded(60, "Location rewriting", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;

        let reply = env.get("/redirect/somewhere").await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
        assert_eq!(
            reply.headers["location"],
            env.url("/orgs/yanqianyu/repos").as_str()
        );
        let paths: Vec<String> = env
            .fake
            .api_requests()
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(
            paths,
            ["/redirect/somewhere"],
            "the proxy followed the redirect"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn rewritten_links_keep_a_stripped_prefix() {
    bounded(60, "Link rewriting with strip_prefix", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;

        let page1 = env.get("/as/yq/orgs/yanqianyu/repos?per_page=2").await;
        assert_eq!(page1.status, StatusCode::OK, "{}", page1.text());
        let link = page1.headers["link"].to_str().expect("ASCII Link");
        let next = link_target(link, "next");
        assert_eq!(
            next,
            env.url("/as/yq/orgs/yanqianyu/repos?page=2&per_page=2")
        );

        let page2 = common::send(
            &env.client,
            common::request(Method::GET, &next, &[], common::full("")),
        )
        .await;
        assert_eq!(page2.status, StatusCode::OK, "{}", page2.text());
        assert_eq!(repo_names(&page2), ["repo-3", "repo-4"]);
        let seen = env.last_api_request("/orgs/yanqianyu/repos");
        assert_eq!(seen.query.as_deref(), Some("page=2&per_page=2"));

        // A redirect through the stripped route comes back with the prefix too.
        let redirect = env.get("/as/yq/redirect/x").await;
        assert_eq!(redirect.status, StatusCode::FOUND);
        assert_eq!(
            redirect.headers["location"],
            env.url("/as/yq/orgs/yanqianyu/repos").as_str()
        );
        env.shutdown().await;
    })
    .await
}
