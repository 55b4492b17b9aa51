//! What bad login links and stray callbacks write to the log: anyone can
//! send them, so they log at debug (no WARN flood), and the values they carry
//! are escaped (a `%0A` in a user name cannot forge a log line).
//!
//! The log is captured in process by a global subscriber, hence one test in
//! this binary: a global subscriber sees every thread, including the
//! runtime's, and no other test can interleave with it.

mod common;

use common::bounded;
use common::users::{USER, UserEnv, fake_oauth};
use http::StatusCode;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;

/// Everything one `fmt` layer wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the text and JSON formats the binary offers, each into its own
/// buffer, at debug for this crate.
fn capture() -> (Captured, Captured) {
    let (text, json) = (Captured::default(), Captured::default());
    let (t, j) = (text.clone(), json.clone());
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::filter::Targets::new()
                .with_target("atomgit_proxy", tracing::Level::DEBUG),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || t.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(move || j.clone()),
        );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    (text, json)
}

const EVIL: &str = "ev%0Ail%20INFO%20atomgit_proxy%3A%20forged";
const EVIL_DECODED: &str = "ev\nil INFO atomgit_proxy: forged";

#[tokio::test]
async fn bad_links_log_at_debug_with_caller_values_escaped() {
    let (text, json) = capture();
    bounded(60, "bad links", async {
        let env = UserEnv::start(fake_oauth(Duration::from_secs(3600))).await;
        let far = common::now_ms() / 1000 + 600;
        let forged = format!("/_proxy/oauth/login?user={EVIL}&exp={far}&nonce=n1&sig=00");
        let cases = [
            (forged.as_str(), StatusCode::FORBIDDEN),
            ("/_proxy/oauth/login?user=alice", StatusCode::BAD_REQUEST),
            (
                "/_proxy/oauth/callback?error=access_denied%0AERROR%20forged",
                StatusCode::BAD_REQUEST,
            ),
            ("/_proxy/oauth/callback?code=c", StatusCode::BAD_REQUEST),
            (
                "/_proxy/oauth/callback?code=c&state=s",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (path, status) in cases {
            for _ in 0..3 {
                assert_eq!(env.get(path).await.status, status, "{path}");
            }
        }
        // A link opened twice.
        let link = env.login_link(USER);
        let first = env.browser().open(&link).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        let again = env.browser().open(&link).await;
        assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
        env.shutdown().await;
    })
    .await;

    let text = text.text();
    let lines: Vec<serde_json::Value> = json
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Nothing the callers did is the operator's problem.
    for line in &lines {
        assert!(
            !matches!(line["level"].as_str(), Some("WARN" | "ERROR")),
            "a caller's mistake logged above debug: {line}"
        );
    }
    let message = |m: &str| {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|x| x.contains(m)))
            .collect::<Vec<_>>()
    };
    // Still there at debug, with the caller's value intact in JSON...
    let bad_sig = message("bad signature");
    assert_eq!(bad_sig.len(), 3, "{}", json.text());
    assert!(
        bad_sig
            .iter()
            .all(|l| l["level"] == "DEBUG" && l["user"] == EVIL_DECODED)
    );
    assert_eq!(message("link used again").len(), 1, "{}", json.text());
    assert_eq!(message("incomplete link").len(), 3);
    assert_eq!(message("state").len(), 6, "{}", json.text());
    assert_eq!(message("reports an error").len(), 3);
    // ...and escaped in text: the forged line never starts a line.
    assert!(
        text.contains(r#"user="ev\nil INFO atomgit_proxy: forged""#),
        "{text}"
    );
    assert!(
        text.contains(r#"error="access_denied\nERROR forged""#),
        "{text}"
    );
    for line in text.lines() {
        assert!(
            !line.starts_with("il ") && !line.starts_with("ERROR forged"),
            "a forged log line: {line:?}\n{text}"
        );
    }
    // The operator still sees logins.
    assert!(
        text.contains(r#"user="alice""#) && text.contains("grant stored"),
        "{text}"
    );
}
