//! `GET /_proxy/status` in a real headless Chromium: the page names the
//! routes and users, shows a new login without being navigated, and with
//! `clients:` asks for the key by Basic auth (401 with `WWW-Authenticate`,
//! then 200 with the key). The test writes `target/status-page.png`
//! (and `status-page-before-login.png`).

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use base64::Engine as _;
use chromium::{Chromedriver, connect_sized, screenshot, target_dir};
use common::bounded;
use common::users::{UserEnv, fake_oauth};
use fantoccini::{Client, Locator};
use http::StatusCode;
use std::time::Duration;

const KEY: &str = "ops-key-0123456789abcdef";

/// The page's visible text.
async fn visible_text(browser: &Client) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .expect("a body")
        .text()
        .await
        .expect("the body's text")
}

/// Adds a client key and an installation route to the user environment's
/// config, and reloads it.
fn with_clients_and_an_installation_route(env: &UserEnv) {
    let text = std::fs::read_to_string(&env.config_path).expect("the config");
    let text = format!(
        "clients:\n  - name: ops\n    key: {{ value: \"{KEY}\" }}\n{text}\
         \x20 - name: yanqianyu\n    match: {{ path_prefix: /orgs/yanqianyu }}\n    installation: {{ id: 14 }}\n"
    );
    std::fs::write(&env.config_path, text).expect("rewrite the config");
    let running = env.running.as_ref().expect("the proxy runs");
    atomgit_proxy::reload::reload(running.shared()).unwrap_or_else(|e| panic!("reload: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_routes_users_and_a_new_login_in_a_real_browser() {
    chromium::chromedriver_path();
    bounded(180, "status page", async {
        let env = UserEnv::start(fake_oauth(Duration::from_secs(8 * 3600))).await;
        with_clients_and_an_installation_route(&env);

        // Without the key: 401, and the header that makes a browser ask.
        let denied = env.get("/_proxy/status").await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        let challenge = denied.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic realm="), "{challenge:?}");
        // With the key as the Basic password (any user name): the page.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{KEY}"));
        let auth = format!("Basic {basic}");
        let client = common::client();
        let page = common::get(
            &client,
            &env.url("/_proxy/status"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.header("content-type")
                .unwrap_or_default()
                .starts_with("text/html")
        );
        assert!(!page.text().contains(KEY), "the key is shown");

        let profile = tempfile::tempdir().expect("a Chromium profile folder");
        let target = target_dir();
        let mut driver = Chromedriver::start(&target.join("chromedriver-status.log"));
        driver.ready().await;
        let browser = connect_sized(&driver, profile.path(), "1200,1300").await;
        // The browser answers the Basic challenge with the URL's credentials.
        let url = format!("http://ops:{KEY}@{}/_proxy/status", env.addr);
        browser.goto(&url).await.expect("open the status page");
        let text = visible_text(&browser).await;
        for wanted in [
            "atomgit-proxy status",
            "alice",
            "yanqianyu",
            "/orgs/yanqianyu",
            "installation id 14",
            "missing",
        ] {
            assert!(text.contains(wanted), "{wanted:?} not on the page:\n{text}");
        }
        assert!(
            text.contains(&format!(
                "atomgit-proxy login -c {} alice",
                env.config_path.display()
            )),
            "the command to log alice in:\n{text}"
        );
        let _ = screenshot(&browser, &target.join("status-page-before-login.png")).await;
        // A mark that a navigation or reload would wipe.
        browser
            .execute("window.__stay = 1; return 1;", vec![])
            .await
            .expect("set a mark");

        env.log_in().await;
        // An upstream failure for the errors section: the fake knows no
        // installation 14, so minting its token fails.
        let bearer = format!("Bearer {KEY}");
        let failed = common::get(
            &client,
            &env.url("/orgs/yanqianyu"),
            &[("authorization", &bearer)],
        )
        .await;
        // A user request whose answer states the platform's budget: the
        // quota section shows the credential.
        let used = common::get(
            &client,
            &env.url("/as/alice/user"),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(used.status, StatusCode::OK, "{}", used.text());
        let mut shown = false;
        for _ in 0..40 {
            let text = visible_text(&browser).await;
            if text.contains("logged in")
                && text.contains("user:alice")
                && !text.contains("missing")
                && text.contains(&failed.status.as_u16().to_string())
            {
                shown = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let shot = target.join("status-page.png");
        let saved = screenshot(&browser, &shot).await;
        let stayed = browser
            .execute("return window.__stay === 1;", vec![])
            .await
            .expect("read the mark");
        let text = visible_text(&browser).await;
        let _ = browser.close().await;
        drop(driver);
        assert!(
            shown,
            "the login (or the {} error) did not show up:\n{text}",
            failed.status
        );
        assert_eq!(
            stayed,
            serde_json::json!(true),
            "the page was navigated, not refreshed in place"
        );
        assert!(!text.contains("atu_") && !text.contains(KEY), "{text}");
        saved.unwrap_or_else(|e| panic!("cannot save {}: {e}", shot.display()));
        env.shutdown().await;
    })
    .await;
}
