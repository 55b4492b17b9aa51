//! The login in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, opens the link `atomgit-proxy login` prints, passes the
//! (fake) platform's authorize page, and lands on the proxy's success page.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; without them
//! the test fails and says so (CI installs them because this file exists).
//! Screenshots go to `target/browser-success.png` and, when the flow fails,
//! `target/browser-failure.png`.

mod common;

use common::bounded;
use common::users::{USER, UserEnv, fake_oauth};
use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "install them with `apt-get install -y chromium chromium-driver`";

/// The cargo target folder (`target/`), wherever CARGO_TARGET_DIR puts it.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// `chromedriver` on PATH, or a failure saying what to install.
fn chromedriver_path() -> PathBuf {
    if !Path::new(CHROMIUM).is_file() {
        panic!("{CHROMIUM} is missing: this test needs Chromium and chromedriver; {INSTALL}");
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromedriver"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("chromedriver is not on PATH; {INSTALL}"))
}

/// A running chromedriver, killed (and reaped) on drop, pass or fail.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start(log: &Path) -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(log).expect("create the chromedriver log");
        let child = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}); {INSTALL}"));
        Chromedriver { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until chromedriver answers `/status`.
    async fn ready(&mut self) {
        let client = common::client();
        let status = format!("{}/status", self.url());
        for _ in 0..200 {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver exited at start ({exit}); {INSTALL}");
            }
            let req = http::Request::get(&status)
                .body(common::full(""))
                .expect("a request");
            if let Ok(resp) = client.request(req).await
                && resp.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {status} within 20s");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(driver: &Chromedriver, profile: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1024,720",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("a JSON object literal")
    };
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("cannot open a Chromium session via chromedriver: {e}"))
}

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

async fn screenshot(browser: &Client, path: &Path) -> Result<(), String> {
    let png = browser.screenshot().await.map_err(|e| e.to_string())?;
    std::fs::write(path, png).map_err(|e| e.to_string())
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
