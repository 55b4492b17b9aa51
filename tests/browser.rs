//! The login in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, opens the link `atomgit-proxy login` prints, passes the
//! (fake) platform's authorize page, and lands on the proxy's success page.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; without them
//! the test fails and says so (CI installs them because this file exists).
//! Screenshots go to `target/browser-success.png` and, when the flow fails,
//! `target/browser-failure.png`.

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use chromium::{Chromedriver, chromedriver_path, connect, screenshot, target_dir};
use common::bounded;
use common::users::{USER, UserEnv, fake_oauth};
use fantoccini::{Client, Locator};
use std::time::Duration;

/// The person's part: open the link, end on the success page. Errors, not
/// panics, so the caller can still take a screenshot.
async fn log_in(browser: &Client, link: &str) -> Result<(), String> {
    browser
        .goto(link)
        .await
        .map_err(|e| format!("opening the login link: {e}"))?;
    let title = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("title"))
        .await
        .map_err(|e| format!("no #title on the final page: {e}"))?;
    let url = browser
        .current_url()
        .await
        .map_err(|e| format!("reading the URL: {e}"))?;
    if url.path() != "/_proxy/oauth/callback" {
        return Err(format!("ended on {url}, not the proxy's callback"));
    }
    let title = title.text().await.map_err(|e| format!("#title: {e}"))?;
    if title != "Logged in as alice" {
        return Err(format!("#title says {title:?}"));
    }
    let message = browser
        .find(Locator::Id("message"))
        .await
        .map_err(|e| format!("no #message: {e}"))?
        .text()
        .await
        .map_err(|e| format!("#message: {e}"))?;
    if !message.contains("alice") {
        return Err(format!("#message does not name alice: {message:?}"));
    }
    let page_title = browser
        .title()
        .await
        .map_err(|e| format!("document title: {e}"))?;
    if !page_title.contains("Logged in as alice") {
        return Err(format!("document title is {page_title:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_with_a_real_browser() {
    let driver_path = chromedriver_path();
    bounded(180, "browser login", async {
        let env = UserEnv::start(fake_oauth(Duration::from_secs(8 * 3600))).await;
        let profile = tempfile::tempdir().expect("a Chromium profile folder");
        let target = target_dir();
        let mut driver = Chromedriver::start(&target.join("chromedriver.log"));
        driver.ready().await;
        let browser = connect(&driver, profile.path()).await;

        let outcome = log_in(&browser, &env.login_link(USER)).await;
        let shot = match &outcome {
            Ok(()) => target.join("browser-success.png"),
            Err(_) => target.join("browser-failure.png"),
        };
        let saved = screenshot(&browser, &shot).await;
        let _ = browser.close().await;
        drop(driver);
        if let Err(why) = outcome {
            let shot = match saved {
                Ok(()) => format!("screenshot in {}", shot.display()),
                Err(e) => format!("no screenshot ({e})"),
            };
            panic!(
                "the browser login failed: {why}; {shot}; chromedriver ({}) log in {}",
                driver_path.display(),
                target.join("chromedriver.log").display()
            );
        }
        saved.unwrap_or_else(|e| panic!("cannot save {}: {e}", shot.display()));

        assert_eq!(env.fake.code_exchanges(), 1);
        env.grant(USER);
        env.use_user_route().await;
        env.shutdown().await;
    })
    .await;
}
