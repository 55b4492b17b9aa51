//! The browser side of a user login, end to end: the operator's one-time
//! link, the platform's authorize page, the callback, and the user route
//! that then acts as the person; and every way a login is refused, each of
//! which must store nothing.

mod common;

use common::bounded;
use common::users::{STATE_COOKIE, USER, UserEnv, fake_oauth};
use http::StatusCode;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_login_from_the_printed_link_makes_the_user_route_act_as_the_person() {
    bounded(60, "login flow", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let link = env.login_link(USER);
        assert!(
            link.starts_with(&env.url("/_proxy/oauth/login?")),
            "the link points at the proxy's login endpoint: {link}"
        );
        let mut browser = env.browser();
        let page = browser.open(&link).await;

        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("Logged in as alice"), "{}", page.body);
        // link → authorize page → callback: two redirects, then the page.
        let paths: Vec<&str> = page.hops.iter().map(|h| h.url.path()).collect();
        assert_eq!(
            paths,
            [
                "/_proxy/oauth/login",
                "/login/oauth/authorize",
                "/_proxy/oauth/callback"
            ]
        );
        assert_eq!(page.url.path(), "/_proxy/oauth/callback");
        assert_eq!(
            browser.cookie(STATE_COOKIE),
            None,
            "the state cookie is cleared once used"
        );
        assert_eq!(env.fake.code_exchanges(), 1);

        let grant = env.grant(USER);
        let stored = grant["access_token"].as_str().unwrap_or_default();
        let token = env.use_user_route().await;
        assert_eq!(token, stored, "the stored grant's token is injected");
        assert_eq!(env.fake.refreshes(), 0);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_user_route_before_any_login_answers_grant_missing() {
    bounded(30, "grant missing", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let reply = env.get("/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("x-atomgit-proxy-error"), Some("grant_missing"));
        let body = reply.json();
        assert_eq!(body["error"], "grant_missing");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("atomgit-proxy login alice"),
            "the message says what to do: {message}"
        );
        assert!(env.fake.api_requests().is_empty(), "nothing went upstream");
        // A user without a grant must not pull the replica out of service:
        // plain readyz is 200 and names the credential that cannot work;
        // the strict form is 503 until the login.
        let ready = env.get("/_proxy/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        let json = ready.json();
        assert_eq!(json["ready"], true, "{json}");
        assert_eq!(json["credentials_ready"], false, "{json}");
        let entry = &json["credentials"][0];
        assert_eq!(entry["credential"], "user alice", "{json}");
        assert_eq!(entry["routes"][0], "alice", "{json}");
        assert_eq!(entry["error"], "grant_missing", "{json}");
        let strict = env.get("/_proxy/readyz?strict=1").await;
        assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE);
        env.log_in().await;
        let strict = env.get("/_proxy/readyz?strict=1").await;
        assert_eq!(strict.status, StatusCode::OK, "{}", strict.text());
        env.shutdown().await;
    })
    .await;
}

/// Opens a fresh link and follows it to the platform, but not back: returns
/// the browser (holding the state cookie) and the callback URL the platform
/// sent it to, with a real, unused code and the proxy's state.
async fn stop_before_callback(env: &UserEnv) -> (common::browser::Browser, url::Url) {
    let mut browser = env.browser();
    let link = url::Url::parse(&env.login_link(USER)).expect("a URL");
    let (hop, _) = browser.fetch(&link).await;
    assert_eq!(hop.status, StatusCode::FOUND);
    let authorize = hop.location.expect("the login redirects to the platform");
    assert!(
        browser.cookie(STATE_COOKIE).is_some(),
        "the state cookie is set"
    );
    let (hop, _) = browser.fetch(&authorize).await;
    assert_eq!(hop.status, StatusCode::FOUND);
    let callback = hop.location.expect("the platform redirects back");
    assert_eq!(callback.path(), "/_proxy/oauth/callback");
    (browser, callback)
}

fn with_query(url: &url::Url, pairs: &[(&str, &str)]) -> url::Url {
    let mut url = url.clone();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
}

fn param(url: &url::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{url} has no {name}"))
}

#[tokio::test]
async fn callbacks_without_a_matching_state_store_nothing() {
    bounded(60, "state checks", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let (mut browser, callback) = stop_before_callback(&env).await;
        let (code, state) = (param(&callback, "code"), param(&callback, "state"));

        // The state is missing.
        let no_state = with_query(&callback, &[("code", &code)]);
        let page = browser.open(no_state.as_str()).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        assert!(page.body.contains("Nothing was stored"), "{}", page.body);

        // The state is not the one in this browser's cookie.
        let other = "0".repeat(state.len());
        let wrong_state = with_query(&callback, &[("code", &code), ("state", &other)]);
        let page = browser.open(wrong_state.as_str()).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        assert!(page.body.contains("state mismatch"), "{}", page.body);

        // The right state, from a browser that did not start the login.
        let page = env.browser().open(callback.as_str()).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        assert!(page.body.contains("state mismatch"), "{}", page.body);

        assert_eq!(env.fake.code_exchanges(), 0, "no code was exchanged");
        assert_eq!(env.stored_grant(USER), None, "no grant was stored");
        let reply = env.get("/as/alice/user").await;
        assert_eq!(reply.header("x-atomgit-proxy-error"), Some("grant_missing"));

        // None of that burnt the real login: it still completes.
        let page = browser.open(callback.as_str()).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(env.fake.code_exchanges(), 1);
        env.use_user_route().await;
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_link_works_once() {
    bounded(60, "reused link", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let link = env.login_link(USER);
        let mut first = env.browser();
        let (hop, _) = first.fetch(&url::Url::parse(&link).expect("a URL")).await;
        assert_eq!(hop.status, StatusCode::FOUND, "the first open works");

        let page = env.browser().open(&link).await;
        assert_eq!(page.status, StatusCode::GONE, "{}", page.body);
        assert!(page.body.contains("already used"), "{}", page.body);
        assert_eq!(page.hops.len(), 1, "the platform is never visited");
        assert_eq!(env.fake.code_exchanges(), 0);
        assert_eq!(env.stored_grant(USER), None);
        env.shutdown().await;
    })
    .await;
}

/// HEAD `url` (with the browser's state cookie, if any); returns the answer.
async fn head(url: &str, cookie: Option<String>) -> http::Response<hyper::body::Incoming> {
    let mut req = http::Request::head(url);
    if let Some(state) = cookie {
        req = req.header(http::header::COOKIE, format!("{STATE_COOKIE}={state}"));
    }
    let req = req.body(common::full("")).expect("a HEAD request");
    common::client()
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("HEAD {url}: {e}"))
}

#[tokio::test]
async fn head_requests_use_up_neither_the_link_nor_the_login() {
    bounded(60, "HEAD on the login pair", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        // Link scanners and mail clients probe links with HEAD, maybe twice.
        let link = env.login_link(USER);
        for _ in 0..2 {
            let resp = head(&link, None).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(resp.headers().get(http::header::SET_COOKIE).is_none());
            assert!(resp.headers().get(http::header::LOCATION).is_none());
        }
        assert!(
            env.fake.requests().is_empty(),
            "nothing reached the platform"
        );
        // The person's GET still works.
        env.browser().open(&link).await;
        assert_eq!(env.fake.code_exchanges(), 1);
        assert!(env.stored_grant(USER).is_some());

        // The callback too: a HEAD neither takes the pending login nor
        // spends the code.
        let (mut browser, callback) = stop_before_callback(&env).await;
        let resp = head(callback.as_str(), browser.cookie(STATE_COOKIE)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(env.fake.code_exchanges(), 1, "the code was not spent");
        let page = browser.open(callback.as_str()).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(env.fake.code_exchanges(), 2);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    bounded(30, "expired link", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let key = atomgit_proxy::credentials::login_link::load_or_create_key(&env.store_path)
            .expect("the link key");
        let past = common::now_ms() / 1000 - 5;
        let query = atomgit_proxy::credentials::login_link::sign(&key, USER, past);
        let link = env.url(&format!("/_proxy/oauth/login?{query}"));

        let page = env.browser().open(&link).await;
        assert_eq!(page.status, StatusCode::GONE, "{}", page.body);
        assert!(page.body.contains("Login link expired"), "{}", page.body);
        assert!(
            page.body.contains("atomgit-proxy login alice"),
            "{}",
            page.body
        );
        assert_eq!(page.hops.len(), 1, "the platform is never visited");
        assert!(env.fake.requests().is_empty());
        assert_eq!(env.stored_grant(USER), None);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_forged_link_is_refused() {
    bounded(30, "forged link", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let link = url::Url::parse(&env.login_link(USER)).expect("a URL");
        let pairs: Vec<(String, String)> = link.query_pairs().into_owned().collect();
        let tamper = |name: &str, f: &dyn Fn(&str) -> String| {
            let changed: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), if k == name { f(v) } else { v.clone() }))
                .collect();
            let mut url = link.clone();
            url.query_pairs_mut().clear().extend_pairs(changed);
            url
        };
        let flip = |v: &str| {
            let mut s = v.to_owned();
            let last = if s.ends_with('0') { "1" } else { "0" };
            s.pop();
            s.push_str(last);
            s
        };
        let forged = [
            tamper("sig", &flip),
            tamper("user", &|_| "mallory".to_owned()),
            tamper("exp", &|v| {
                (v.parse::<u64>().unwrap_or(0) + 3600).to_string()
            }),
        ];
        for url in forged {
            let page = env.browser().open(url.as_str()).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{url}: {}", page.body);
            assert!(page.body.contains("Invalid login link"), "{}", page.body);
        }
        assert!(
            env.fake.requests().is_empty(),
            "the platform is never visited"
        );
        assert_eq!(env.stored_grant(USER), None);

        // The genuine link was not used up by the forgeries.
        let page = env.browser().open(link.as_str()).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        env.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reused_code_is_refused_by_the_platform_and_the_grant_stays() {
    bounded(60, "reused code", async {
        let env = UserEnv::start(fake_oauth(8 * HOUR)).await;
        let first = env.log_in().await;
        let (first_code, _) = first.callback_params().expect("the first callback");
        let grant = env.grant(USER);
        let store_before = std::fs::read(&env.store_path).expect("the store");
        assert_eq!(env.fake.code_exchanges(), 1);

        // A second login, but the FIRST code comes back with its state.
        let (mut browser, callback) = stop_before_callback(&env).await;
        let state = param(&callback, "state");
        let replay = with_query(&callback, &[("code", &first_code), ("state", &state)]);
        let page = browser.open(replay.as_str()).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        assert!(
            page.body.contains("refused the authorization code"),
            "{}",
            page.body
        );
        assert!(page.body.contains("Nothing was stored"), "{}", page.body);

        assert_eq!(env.fake.code_exchanges(), 1, "the platform refused it");
        assert_eq!(env.grant(USER), grant, "the first grant is unchanged");
        let before: serde_json::Value = serde_json::from_slice(&store_before).expect("JSON");
        assert_eq!(
            env.store_json()["grants"],
            before["grants"],
            "nothing new was stored"
        );
        let token = env.use_user_route().await;
        assert_eq!(token, grant["access_token"].as_str().unwrap_or_default());
        env.shutdown().await;
    })
    .await;
}
