//! Headless Chromium driven over WebDriver by chromedriver (fantoccini), for
//! the tests that need a real browser (`browser.rs`, `status_page.rs`).
//! Included by those binaries only (`#[path]`), so the others do not link
//! fantoccini.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; without them
//! a test fails and says so.

#![allow(dead_code)]

use crate::common;
use fantoccini::{Client, ClientBuilder};
use http::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const INSTALL: &str = "install them with `apt-get install -y chromium chromium-driver`";

/// The cargo target folder (`target/`), wherever CARGO_TARGET_DIR puts it.
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// `chromedriver` on PATH, or a failure saying what to install.
pub fn chromedriver_path() -> PathBuf {
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
pub struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    pub fn start(log: &Path) -> Chromedriver {
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until chromedriver answers `/status`.
    pub async fn ready(&mut self) {
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

pub async fn connect(driver: &Chromedriver, profile: &Path) -> Client {
    connect_sized(driver, profile, "1024,720").await
}

/// [`connect`] with a window of `size` (`"WIDTH,HEIGHT"`).
pub async fn connect_sized(driver: &Chromedriver, profile: &Path, size: &str) -> Client {
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
                format!("--window-size={size}"),
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

/// Saves a screenshot of the current page.
pub async fn screenshot(browser: &Client, path: &Path) -> Result<(), String> {
    let png = browser.screenshot().await.map_err(|e| e.to_string())?;
    std::fs::write(path, png).map_err(|e| e.to_string())
}
