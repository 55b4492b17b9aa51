//! A user grant belongs to the platform it was obtained for: after a reload
//! to another upstream its token goes nowhere (503 `grant_missing`) until the
//! person logs in again; a grant from a store written before grants were
//! bound is adopted by the config that uses it.

mod common;

use atomgit_fake::{FakeAtomGit, Recorded, TokenOwner};
use common::bounded;
use common::users::{USER, UserEnv, fake_oauth, start_oauth_fake};
use http::StatusCode;
use http::header::AUTHORIZATION;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const TOKEN_PATH: &str = "/login/oauth/access_token";

/// Requests the fake got that carried a user token or went to its token
/// endpoint (where a refresh token would be sent).
fn user_credential_requests(fake: &FakeAtomGit) -> Vec<Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            r.path == TOKEN_PATH
                || r.headers
                    .get_all(AUTHORIZATION)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains("atu_")))
        })
        .collect()
}

#[tokio::test]
async fn after_a_reload_to_another_upstream_the_grant_is_not_used_there() {
    bounded(60, "grant binding", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        env.use_user_route().await;
        let stored = env.grant(USER);
        assert_eq!(
            stored["bound_to"]["upstream"],
            env.fake.url(),
            "the grant records its platform: {stored}"
        );
        let seen_by_first = env.fake.requests().len();

        let second = start_oauth_fake(fake_oauth(8 * HOUR)).await;
        env.reload_with_upstream(&second);
        for _ in 0..3 {
            let reply = env.get("/as/alice/user").await;
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.text()
            );
            assert_eq!(reply.header("x-atomgit-proxy-error"), Some("grant_missing"));
            let message = reply.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                message.contains("atomgit-proxy login alice") && message.contains("another"),
                "the message says why and what to do: {message}"
            );
        }
        let ready = env.get("/_proxy/readyz").await;
        assert_eq!(
            ready.status,
            StatusCode::OK,
            "one user's grant is not an outage"
        );
        assert_eq!(ready.json()["credentials"][0]["error"], "grant_missing");

        assert!(
            user_credential_requests(&second).is_empty(),
            "the new upstream received a user credential: {:?}",
            second.requests()
        );
        assert!(second.requests().is_empty(), "{:?}", second.requests());
        assert_eq!(
            env.fake.requests().len(),
            seen_by_first,
            "the old upstream is not used either"
        );

        // Logging in again, now at the new platform, binds a new grant there.
        let page = env.browser().open(&env.login_link(USER)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(second.code_exchanges(), 1);
        let reply = env.get("/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let last = second
            .api_requests()
            .pop()
            .expect("the route reached the new platform");
        let token = last
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .expect("a bearer token")
            .to_owned();
        assert_eq!(
            second.token_owner(&token),
            Some(TokenOwner::User(USER.into()))
        );
        assert_eq!(env.grant(USER)["bound_to"]["upstream"], second.url());
        assert_eq!(env.fake.requests().len(), seen_by_first);
        second.shutdown();
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_grant_from_an_older_store_is_adopted_by_the_config_using_it() {
    bounded(60, "grant adoption", async {
        let mut env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        env.log_in().await;
        // As a store written before grants were bound.
        let mut store = env.store_json();
        let removed = store["grants"][USER]
            .as_object_mut()
            .and_then(|g| g.remove("bound_to"));
        assert!(removed.is_some(), "a new grant is bound: {store}");
        env.write_store(&store);
        env.restart().await;

        env.use_user_route().await;
        let grant = env.grant(USER);
        assert_eq!(grant["bound_to"]["upstream"], env.fake.url(), "{grant}");
        assert_eq!(grant["bound_to"]["app_id"], common::APP_ID, "{grant}");
        assert_eq!(env.fake.refreshes(), 0, "adoption is no refresh");
        env.shutdown().await;
    })
    .await;
}
