//! The integration-test harness: a fake AtomGit and the proxy in front of it,
//! both started inside the test on `127.0.0.1:0`, plus a plain hyper client.
//!
//! - this file: the app key, the fake, config text and [`TestEnv`]
//!   (installation routes);
//! - `http_client` (re-exported here): the HTTP client every test uses,
//!   [`send`], [`get`] and the whole answer, [`Reply`];
//! - [`users`]: [`users::UserEnv`], a proxy with a user route, its config
//!   file and grant store, for the login and user-token tests;
//! - [`browser`]: a tiny cookie-keeping browser that follows the login's
//!   redirects;
//! - [`redis`]: a real `redis-server` on a free port, killable and
//!   restartable; [`fleet`]: several proxies sharing it;
//! - [`process`]: the built binary's `serve` as a child process;
//! - [`quota`]: a per-second limit on the fake and counting against it;
//! - [`raw_http`]: HTTP/1.1 written and read by hand, a caller's connection
//!   and a platform answering exact bytes (tests/http1_wire.rs).
//!
//! Each test binary compiles this module on its own (`mod common;`) and uses
//! only part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod browser;
pub mod fleet;
mod http_client;
pub mod process;
pub mod quota;
pub mod raw_http;
pub mod redis;
pub mod users;

pub use http_client::*;

use atomgit_fake::{FakeAtomGit, FakeInstallation, FakeOptions, Recorded, TokenOwner};
use atomgit_proxy::app::{self, Running};
use atomgit_proxy::config::Config;
use atomgit_proxy::server;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The route most tests need: `/orgs/yanqianyu` as installation 14, by id.
pub const YANQIANYU_ROUTE: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
";

/// The app id every test config and the fake agree on.
pub const APP_ID: u64 = 75;

/// One app key per test binary: generating a 2048-bit RSA key takes long
/// enough that every test doing it would dominate the run.
pub fn app_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(atomgit_fake::generate_app_key)
}

/// The private key PEM, for tests that write key files or look for leaks.
pub fn private_key_pem() -> &'static str {
    &app_key().0
}

/// Fails the test with `what` if `fut` takes longer than `secs`.
pub async fn bounded<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Removes the common indentation of `text` and indents every line by
/// `indent` spaces, so tests can write YAML blocks naturally in raw strings.
pub fn reindent(text: &str, indent: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let common = lines
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(indent);
    lines
        .iter()
        .map(|l| format!("{pad}{}\n", &l[common..]))
        .collect()
}

/// Wall-clock epoch milliseconds, the unit the grant store and the platform use.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The fake's options with [`APP_ID`] and [`app_key`], and a budget no
/// test spends by accident (the quota tests set their own); the rest default.
pub fn fake_options() -> FakeOptions {
    FakeOptions {
        app_id: APP_ID,
        app_public_key_pem: app_key().1.clone(),
        rate_limit: atomgit_fake::FakeRateLimit {
            limit: 1_000_000,
            ..Default::default()
        },
        ..FakeOptions::default()
    }
}

/// Starts a fake AtomGit on `127.0.0.1:0` with `options` (see [`fake_options`]).
pub async fn start_fake_with(options: FakeOptions) -> FakeAtomGit {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake on 127.0.0.1:0");
    FakeAtomGit::start(listener, options)
        .await
        .expect("start the fake AtomGit")
}

/// Starts a fake AtomGit that trusts [`app_key`] and knows `installations`.
pub async fn start_fake(installations: &[(u64, &str)], token_lifetime: Duration) -> FakeAtomGit {
    start_fake_with(FakeOptions {
        installations: installations
            .iter()
            .map(|&(id, account)| FakeInstallation {
                id,
                account: account.to_owned(),
            })
            .collect(),
        token_lifetime,
        ..fake_options()
    })
    .await
}

/// A config file's text: loopback listener on port 0, `upstream`, the app
/// key given as `private_key` (a YAML flow mapping such as `{ file: app.pem }`),
/// any extra top-level YAML, and `routes` (a YAML list, any indentation).
pub fn config_yaml(upstream: &str, private_key: &str, extra: &str, routes: &str) -> String {
    config_yaml_with(
        "127.0.0.1:0",
        upstream,
        &format!("private_key: {private_key}"),
        extra,
        routes,
    )
}

/// [`config_yaml`] in full: the proxy listens on `listen`, and `app` holds
/// the `app:` keys besides `id` (one per line, any indentation). Smoothing
/// is off (`quota: { per_second: 0 }`) unless `extra` sets `quota:`: tests
/// that send bursts are not about the bucket.
pub fn config_yaml_with(
    listen: &str,
    upstream: &str,
    app: &str,
    extra: &str,
    routes: &str,
) -> String {
    let quota = if extra.contains("quota:") {
        ""
    } else {
        "quota: { per_second: 0 }\n"
    };
    format!(
        "listen: [\"{listen}\"]\nupstream: {upstream}\napp:\n  id: {APP_ID}\n{}{}{quota}routes:\n{}",
        reindent(app, 2),
        reindent(extra, 0),
        reindent(routes, 2),
    )
}

/// `{ value: "<pem>" }`: the key inline, JSON-escaped (a JSON string is a
/// valid YAML double-quoted scalar, newlines included).
pub fn inline_key() -> String {
    let pem = serde_json::to_string(private_key_pem()).expect("a string serialises");
    format!("{{ value: {pem} }}")
}

/// What a [`TestEnv`] is started with.
pub struct EnvOptions<'a> {
    /// The `routes:` list.
    pub routes: &'a str,
    /// The fake's installations: (id, account path).
    pub installations: &'a [(u64, &'a str)],
    /// Extra top-level YAML (e.g. `timeouts: { response: 1s }`).
    pub extra_yaml: &'a str,
    /// Lifetime of the `ats_` tokens the fake mints.
    pub token_lifetime: Duration,
    /// Where the proxy sends requests instead of the fake (e.g. a dead port).
    pub upstream: Option<String>,
}

impl Default for EnvOptions<'_> {
    fn default() -> Self {
        EnvOptions {
            routes: "",
            installations: &[],
            extra_yaml: "",
            token_lifetime: Duration::from_secs(3600),
            upstream: None,
        }
    }
}

/// A fake AtomGit, the proxy in front of it, and a client.
pub struct TestEnv {
    pub fake: FakeAtomGit,
    /// `None` once [`TestEnv::stop_proxy`] took it.
    pub running: Option<Running>,
    /// Where the proxy listens.
    pub addr: SocketAddr,
    pub client: HttpClient,
}

impl TestEnv {
    pub async fn start(routes: &str, installations: &[(u64, &str)]) -> TestEnv {
        Self::start_with(EnvOptions {
            routes,
            installations,
            ..EnvOptions::default()
        })
        .await
    }

    pub async fn start_with(opts: EnvOptions<'_>) -> TestEnv {
        let fake = start_fake(opts.installations, opts.token_lifetime).await;
        let upstream = opts.upstream.unwrap_or_else(|| fake.url());
        let yaml = config_yaml(&upstream, &inline_key(), opts.extra_yaml, opts.routes);
        Self::start_yaml(fake, &yaml).await
    }

    /// The proxy, from a whole config text, in front of `fake`.
    pub async fn start_yaml(fake: FakeAtomGit, yaml: &str) -> TestEnv {
        let config = Config::from_yaml(yaml, Path::new("."), "test config")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{yaml}"));
        let listeners =
            server::bind(&config.listen, config.unix_socket_mode).expect("bind the proxy");
        let running = app::start(config, listeners).expect("start the proxy");
        let addr = running.addrs[0]
            .parse()
            .expect("a TCP listener describes itself as ip:port");
        TestEnv {
            fake,
            running: Some(running),
            addr,
            client: client(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `path` (with any query) on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy_url())
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Sends a request with `headers` (appended, so a name may repeat) and a
    /// small body, and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        send(
            &self.client,
            request(method, &self.url(path), headers, full(body)),
        )
        .await
    }

    /// The most recent API request the fake received for `path`.
    pub fn last_api_request(&self, path: &str) -> Recorded {
        self.fake
            .api_requests()
            .into_iter()
            .rev()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("the fake received no request for {path}"))
    }

    /// Who the token on the most recent request for `path` belongs to.
    pub fn owner_of_last(&self, path: &str) -> TokenOwner {
        let token = single_bearer(&self.last_api_request(path).headers);
        self.fake
            .token_owner(&token)
            .unwrap_or_else(|| panic!("the fake did not issue the token sent for {path}"))
    }

    /// Stops the proxy (draining in-flight requests), leaving the fake up.
    pub async fn stop_proxy(&mut self) {
        if let Some(running) = self.running.take() {
            bounded(35, "proxy shutdown", running.shutdown()).await;
        }
    }

    /// Stops everything this environment started.
    pub async fn shutdown(mut self) {
        // Idle pooled connections would otherwise be drained one by one.
        self.client = client();
        self.stop_proxy().await;
        self.fake.shutdown();
    }
}

/// The entry of `route` in `/_proxy/credentials`' JSON.
pub fn credential<'a>(json: &'a serde_json::Value, route: &str) -> &'a serde_json::Value {
    json["credentials"]
        .as_array()
        .expect("a credentials list")
        .iter()
        .find(|c| {
            c["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|n| n == route))
        })
        .unwrap_or_else(|| panic!("no credential for route {route}: {json}"))
}

/// The token of the one `Authorization: Bearer` header in `headers`.
pub fn single_bearer(headers: &HeaderMap) -> String {
    let values: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    assert_eq!(
        values.len(),
        1,
        "expected exactly one Authorization header: {values:?}"
    );
    let value = values[0].to_str().expect("an ASCII Authorization header");
    let token = value
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {value}"));
    assert!(
        token.starts_with("ats_"),
        "not an installation token: {token}"
    );
    token.to_owned()
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// Polls until a TCP connect to `addr` is refused (or `secs` run out).
pub async fn wait_until_refused(addr: SocketAddr, secs: u64) {
    bounded(secs, "waiting for the port to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
