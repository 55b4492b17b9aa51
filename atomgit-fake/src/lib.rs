//! An in-process fake AtomGit server for the `dev` demo command and the tests.
//!
//! It owns everything the proxy talks to upstream: app-JWT checks and
//! installation tokens (`/app/...`), the OAuth authorize page and token
//! endpoint (`/login/oauth/...`), and "the API" (any other path), which checks
//! the injected bearer token and offers endpoints for pagination, redirects,
//! streaming and timeouts. It reproduces the platform's quirks described in
//! `ATOMGIT_API.md` (the installations list shape, `expires_at` in `+08:00`
//! with milliseconds, `expires_in` as absolute epoch milliseconds) and records
//! every request so tests can assert on what the proxy sent.
//!
//! A workspace crate of its own so the proxy's production build leaves it out:
//! atomgit-proxy uses it behind its default `dev` feature and as a
//! dev-dependency of its tests.
//!
//! # Layout
//! - `app_endpoints`: app JWT checks (of every app), the installation list,
//!   `ats_` minting (scoped or not).
//! - `heal`: knobs for revoked tokens, a clock offset and scoped mints.
//! - `oauth_endpoints`: the authorize page and the OAuth token endpoint.
//! - `api`: every other path, behind the injected bearer token.
//! - `state`: `FakeState`, the settings and bookkeeping the endpoints share.
//! - `ratelimit`: the platform's budget per credential (`x-ratelimit-*`,
//!   403 past the window's budget, 429 past the per-second limit).
//! - `resources`: documents with `ETag`/`Last-Modified` and 304s.
//! - `respond`: response bodies and builders.

mod api;
mod app_endpoints;
mod heal;
mod oauth_endpoints;
mod ratelimit;
mod resources;
mod respond;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use ratelimit::FakeRateLimit;
use respond::Resp;
use state::{FakeState, Inner, OAuthApp};

/// Configuration of a [`FakeAtomGit`].
#[derive(Clone, Debug)]
pub struct FakeOptions {
    pub app_id: u64,
    /// PEM public key (PKCS#1 `RSA PUBLIC KEY` or SPKI `PUBLIC KEY`) that
    /// verifies the app JWT (RS256). Empty: every app JWT is refused.
    pub app_public_key_pem: String,
    pub installations: Vec<FakeInstallation>,
    /// Lifetime of `ats_` tokens.
    pub token_lifetime: Duration,
    pub oauth: FakeOAuth,
    /// More apps besides `app_id`, each with its own key; every app may
    /// mint for every installation.
    pub extra_apps: Vec<FakeApp>,
    /// The budget of every credential (`x-ratelimit-*`).
    pub rate_limit: FakeRateLimit,
}

/// One more app the fake knows.
#[derive(Clone, Debug)]
pub struct FakeApp {
    pub id: u64,
    /// PEM public key that verifies this app's JWTs.
    pub public_key_pem: String,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            app_id: 75,
            app_public_key_pem: String::new(),
            installations: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            oauth: FakeOAuth::default(),
            extra_apps: Vec::new(),
            rate_limit: FakeRateLimit::default(),
        }
    }
}

/// One place the app is installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeInstallation {
    pub id: u64,
    /// The org or user path (`account.path`).
    pub account: String,
}

/// The fake's OAuth app and its one user.
#[derive(Clone, Debug)]
pub struct FakeOAuth {
    pub client_id: String,
    pub client_secret: String,
    /// The person "logged in" at the fake's authorize page.
    pub user: String,
    pub access_lifetime: Duration,
    pub refresh_lifetime: Duration,
    /// How `expires_in` / `refresh_token_expires_in` are written.
    pub expires_format: ExpiresFormat,
    /// True: every refresh returns a new refresh token and the old one dies.
    pub rotate_refresh_tokens: bool,
}

impl Default for FakeOAuth {
    fn default() -> Self {
        FakeOAuth {
            client_id: "49521b236a3e8937".to_owned(),
            client_secret: "fake-client-secret".to_owned(),
            user: "alice".to_owned(),
            access_lifetime: Duration::from_secs(8 * 3600),
            refresh_lifetime: Duration::from_secs(180 * 86_400),
            expires_format: ExpiresFormat::default(),
            rotate_refresh_tokens: true,
        }
    }
}

/// How the token endpoint writes expiries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpiresFormat {
    /// Absolute epoch milliseconds: the platform's real quirk.
    #[default]
    EpochMillis,
    /// Absolute epoch seconds.
    EpochSeconds,
    /// Seconds from now, as classic OAuth 2.0 means `expires_in`.
    RelativeSeconds,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    /// When it arrived (tokio's clock).
    pub at: tokio::time::Instant,
}

/// Who a token the fake issued belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenOwner {
    Installation(u64),
    User(String),
}

/// Generates a 2048-bit RSA app key: (PKCS#8 private key PEM, SPKI public key PEM).
///
/// # Panics
/// Only if the RSA library fails to generate or encode a fresh key, which does
/// not happen with a working OS random source.
pub fn generate_app_key() -> (String, String) {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
        .expect("RSA key generation with the OS RNG does not fail");
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .expect("a fresh RSA key encodes as PKCS#8")
        .to_string();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("a fresh RSA public key encodes as SPKI");
    (private_pem, public_pem)
}

/// A running fake AtomGit. Dropping it stops the server.
pub struct FakeAtomGit {
    shared: Arc<FakeState>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeAtomGit {
    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on an already-bound
    /// listener. Fails if the listener has no local address or the public key
    /// is not empty but cannot be parsed.
    pub async fn start(listener: TcpListener, opts: FakeOptions) -> std::io::Result<FakeAtomGit> {
        let mut addr = listener.local_addr()?;
        // A wildcard bind is still reached through loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let key = if opts.app_public_key_pem.trim().is_empty() {
            None
        } else {
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(opts.app_public_key_pem.as_bytes())
                .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("app public key: {e}"),
                )
            })?;
            Some(key)
        };
        let mut extra_keys = Vec::new();
        for app in &opts.extra_apps {
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes())
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("public key of app {}: {e}", app.id),
                    )
                })?;
            extra_keys.push((app.id, key));
        }
        let inner = Inner {
            requests: VecDeque::new(),
            installations: opts.installations,
            token_lifetime: opts.token_lifetime,
            access_lifetime: opts.oauth.access_lifetime,
            failure: None,
            oauth_delay: None,
            mint_delay: None,
            tokens: HashMap::new(),
            codes: HashMap::new(),
            refresh: HashMap::new(),
            mints: HashMap::new(),
            installation_lists: 0,
            expired_seen: 0,
            code_exchanges: 0,
            refreshes: 0,
            refused_refreshes: 0,
            api_in_flight: 0,
            api_max_in_flight: 0,
            revoke_on_issue: false,
            revoked_seen: 0,
            clock_offset: 0,
            mint_bodies: Vec::new(),
            ignore_scope: false,
            budgets: ratelimit::Budgets {
                settings: opts.rate_limit,
                ..Default::default()
            },
            resources: Default::default(),
        };
        let oauth = OAuthApp {
            client_id: opts.oauth.client_id,
            client_secret: opts.oauth.client_secret,
            user: opts.oauth.user,
            refresh_lifetime: opts.oauth.refresh_lifetime,
            expires_format: opts.oauth.expires_format,
            rotate_refresh_tokens: opts.oauth.rotate_refresh_tokens,
        };
        let shared = Arc::new(FakeState::new(
            opts.app_id,
            key,
            extra_keys,
            oauth,
            format!("http://{addr}"),
            inner,
        ));
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(FakeAtomGit { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Every request received, oldest first (the last 10 000).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Recorded requests other than `/app/...` and `/login/oauth/...`.
    pub fn api_requests(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| !is_app_path(&r.path) && !is_oauth_path(&r.path))
            .cloned()
            .collect()
    }

    /// Successful `POST /app/installations/{id}/access_tokens`.
    pub fn mint_count(&self) -> usize {
        self.shared.lock().mints.values().sum()
    }

    pub fn mints_for(&self, installation_id: u64) -> usize {
        self.shared
            .lock()
            .mints
            .get(&installation_id)
            .copied()
            .unwrap_or(0)
    }

    /// `GET /app/installations` calls, successful or not.
    pub fn installation_list_count(&self) -> usize {
        self.shared.lock().installation_lists
    }

    pub fn token_owner(&self, token: &str) -> Option<TokenOwner> {
        self.shared
            .lock()
            .tokens
            .get(token)
            .map(|rec| rec.owner.clone())
    }

    /// API calls that carried a token at or past its expiry.
    pub fn expired_tokens_seen(&self) -> usize {
        self.shared.lock().expired_seen
    }

    /// `Some(status)`: the installation token and OAuth token endpoints answer
    /// that status with a text body; `None` restores normal service.
    pub fn set_token_endpoint_failure(&self, status: Option<u16>) {
        self.shared.lock().failure = status;
    }

    /// `Some(d)`: the OAuth token endpoint waits `d` before it looks at a
    /// request; `None` restores normal speed.
    pub fn set_oauth_delay(&self, delay: Option<Duration>) {
        self.shared.lock().oauth_delay = delay;
    }

    /// `Some(d)`: an installation token mint waits `d` before it answers
    /// (a slow platform); `None` restores normal speed.
    pub fn set_mint_delay(&self, delay: Option<Duration>) {
        self.shared.lock().mint_delay = delay;
    }

    /// Lifetime of `ats_` tokens minted from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.shared.lock().token_lifetime = d;
    }

    /// Adds an installation, or renames the account of an existing id.
    pub fn add_installation(&self, id: u64, account: &str) {
        let mut inner = self.shared.lock();
        match inner.installations.iter_mut().find(|i| i.id == id) {
            Some(existing) => existing.account = account.to_owned(),
            None => inner.installations.push(FakeInstallation {
                id,
                account: account.to_owned(),
            }),
        }
    }

    /// Successful `authorization_code` exchanges.
    pub fn code_exchanges(&self) -> usize {
        self.shared.lock().code_exchanges
    }

    /// Successful `refresh_token` grants.
    pub fn refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// Refused `refresh_token` grants (unknown, used, expired or revoked).
    pub fn refused_refreshes(&self) -> usize {
        self.shared.lock().refused_refreshes
    }

    /// Invalidates every refresh token of `user` (issued access tokens stay
    /// valid until they expire).
    pub fn revoke_user_grants(&self, user: &str) {
        self.shared.lock().refresh.retain(|_, rec| rec.user != user);
    }

    /// The most API requests the fake was answering at once (until their
    /// response headers), since it started.
    pub fn max_concurrent_api_requests(&self) -> usize {
        self.shared.lock().api_max_in_flight
    }

    /// Lifetime of `atu_` tokens issued from now on.
    pub fn set_access_lifetime(&self, d: Duration) {
        self.shared.lock().access_lifetime = d;
    }

    /// The budget every credential gets from now on (windows running keep
    /// their end).
    pub fn set_rate_limit(&self, settings: FakeRateLimit) {
        self.shared.lock().budgets.settings = settings;
    }

    /// `owner`'s own requests per window, instead of the common limit.
    pub fn set_limit_for(&self, owner: TokenOwner, limit: u64) {
        self.shared.lock().budgets.limits.insert(owner, limit);
    }

    /// Spends `owner`'s whole window, as tools calling the platform without
    /// the proxy would: its next request is refused with 403.
    pub fn exhaust_budget(&self, owner: &TokenOwner) {
        self.shared.lock().budgets.exhaust(owner);
    }

    /// Sets the content of resource `name` (`GET .../etag/{name}`); each
    /// call makes a new version with new validators.
    pub fn set_resource(&self, name: &str, content: &str) {
        self.shared.lock().resources.set(name, content);
    }

    /// Lets the second half of `n` held-back `gate=1` bodies go.
    pub fn open_gate(&self, n: usize) {
        self.shared.lock().resources.gate.add_permits(n);
    }

    /// API requests received for exactly `path` (query ignored).
    pub fn requests_to(&self, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Stops accepting and aborts the server task and its connections.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for FakeAtomGit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_app_path(path: &str) -> bool {
    path == "/app" || path.starts_with("/app/")
}

fn is_oauth_path(path: &str) -> bool {
    path.starts_with("/login/oauth/")
}

/// Accept loop. Connections live in a `JoinSet` owned by this task, so
/// aborting the task (shutdown or drop) also closes every open connection.
async fn serve(listener: TcpListener, shared: Arc<FakeState>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "fake AtomGit: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<FakeState>) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(&shared, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // Clients hanging up mid-stream is routine in timeout tests.
        tracing::debug!(error = %e, "fake AtomGit: connection ended with error");
    }
}

/// Records the request, then dispatches it to its endpoint family.
async fn route(shared: &FakeState, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    tracing::debug!(method = %req.method(), path = %path, "fake AtomGit request");
    shared.lock().record(Recorded {
        method: req.method().clone(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        version: req.version(),
        at: tokio::time::Instant::now(),
    });

    let mut resp = dispatch(shared, req, &path).await;
    // On the fake's own clock, which may be off (hyper adds none when one is set).
    let date = shared.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    respond::add_header(&mut resp, http::header::DATE, &date);
    resp
}

async fn dispatch(shared: &FakeState, req: http::Request<Incoming>, path: &str) -> Resp {
    if is_app_path(path) {
        app_endpoints::handle(shared, req).await
    } else if path == "/login/oauth/authorize" {
        oauth_endpoints::authorize(shared, req.method(), req.uri().query())
    } else if path == "/login/oauth/access_token" {
        oauth_endpoints::access_token(shared, req).await
    } else if is_oauth_path(path) {
        respond::message(http::StatusCode::NOT_FOUND, "Not Found")
    } else {
        api::handle(shared, req).await
    }
}
