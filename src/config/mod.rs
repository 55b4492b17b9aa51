//! Configuration: the validated snapshot the proxy runs on.
//!
//! The YAML is parsed into the raw types of [`file`](mod@file), then `validate` turns
//! them into a [`Config`]: keys parsed, URLs split, durations read and routes
//! compiled, so nothing on the request path parses configuration again. A
//! `Config` is immutable; a reload builds a whole new one (see `reload.rs`).

pub mod file;
mod perms;
pub mod secret;
pub mod store;
mod validate;

use crate::routes::RouteTable;
pub use secret::Secret;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default inbound listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default Open API base.
pub const DEFAULT_UPSTREAM: &str = "https://api.atomgit.com";
/// Default browser-facing authorize page.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://atomgit.com/login/oauth/authorize";

/// The login-link signing key's file, beside the grant store at `store`.
/// Named here, with the store, because the config knows every file that
/// holds a secret (their permissions are checked after each load).
pub fn link_key_path(store: &Path) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".link-key");
    store.with_file_name(name)
}

/// A validated, immutable configuration snapshot.
#[derive(Debug)]
pub struct Config {
    /// The file this came from (absent for the `dev` demo's embedded config);
    /// reloads re-read it.
    pub path: Option<PathBuf>,
    /// Where to accept local callers.
    pub listen: Vec<ListenAddr>,
    /// Mode given to unix socket listeners.
    pub unix_socket_mode: u32,
    /// Every file this config was built from (itself, key files, the CA
    /// file): the reload watcher watches their folders and compares their
    /// content.
    pub files: Vec<PathBuf>,
    /// The files secrets are read from (a subset of `files`): checked for
    /// permissions that let other users read them.
    pub secret_files: Vec<PathBuf>,
    /// Where requests and token calls go.
    pub upstream: UpstreamConfig,
    /// The app identity (the first of `apps`, the only one with `app:`);
    /// shared so the credential layer can hold it across reloads.
    pub app: Arc<AppConfig>,
    /// Every app identity, in name order (one with `app:`); routes name
    /// theirs (`Route::app`).
    pub apps: Vec<Arc<AppConfig>>,
    /// OAuth endpoints; present when any route acts as a user.
    pub oauth: Option<OAuthEndpoints>,
    /// Durable grant store file; required when any route acts as a user.
    pub store_path: Option<PathBuf>,
    /// Shared state in Redis (fleet mode), instead of `store_path`.
    pub store_redis: Option<store::RedisStoreConfig>,
    /// Known local callers; empty means no caller authentication.
    pub clients: Vec<ClientConfig>,
    /// The operator opted out of the loopback-only rule for open listeners.
    pub allow_unauthenticated: bool,
    /// How early a token is refreshed before it expires.
    pub refresh_margin: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Caps and timeouts on inbound connections and upstream concurrency.
    pub limits: Limits,
    /// Which `Origin` and `Host` values are served (browser defences).
    pub browser: BrowserPolicy,
    /// Compiled routes, in file order.
    pub routes: RouteTable,
    /// How each credential's requests are spaced (`quota:`).
    pub quota: QuotaConfig,
    /// The conditional cache (`cache:`).
    pub cache: CacheConfig,
    /// Write an audit line per forwarded request (target `audit`).
    pub audit: bool,
}

/// The `quota:` settings: a token bucket per credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Sustained requests per second per credential; 0 turns smoothing off.
    pub per_second: u32,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
    /// How long a request may wait for its slot before 429 `rate_limited`.
    pub max_wait: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        // The platform's own per-second limit (ATOMGIT_API.md section 6).
        QuotaConfig {
            per_second: 10,
            burst: 10,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// The `cache:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes all entries may hold; 0 turns the cache and GET sharing off.
    pub max_bytes: u64,
    /// The largest body kept (and shared).
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// Caps on what callers can make the proxy hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head accepted (431 past it).
    pub max_header_bytes: usize,
    /// Open inbound connections; the accept loop waits past it.
    pub max_connections: usize,
    /// Requests in flight to the platform at once; more wait.
    pub max_upstream_requests: usize,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// From accept to a request's complete headers.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            max_upstream_requests: 512,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// What a browser may make the proxy do: nothing, unless an origin or host
/// is listed. Built at load so a request only compares strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// `Origin` values served (ASCII-lowercased `scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Whether `Host` is checked at all: only without `clients:` (a caller
    /// with a key is no web page).
    pub check_host: bool,
    /// Host names (lowercased, without port) served besides loopback ones:
    /// listen addresses, routes' `match.host`, `allowed_hosts:` and the
    /// OAuth redirect's host.
    pub allowed_hosts: Vec<String>,
    /// A listener on `0.0.0.0`/`::` is reached by every address of the
    /// machine; an IP literal cannot be a rebound DNS name, so any is served.
    pub any_ip_literal: bool,
}

/// A listener address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The upstream, split once so each request only copies cheap parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `https` or `http` (the latter only to loopback).
    pub scheme: http::uri::Scheme,
    /// `host[:port]` as the URI and `Host` header carry it.
    pub authority: http::uri::Authority,
    /// Path under which the API lives (`""` for `https://api.atomgit.com`).
    pub base_path: String,
    /// `scheme://authority`, the prefix recognised when rewriting `Link`/`Location`.
    pub origin: String,
    /// Extra trusted CA certificates (PEM), read at load so a rotated file is
    /// picked up by a reload.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl UpstreamConfig {
    /// `{origin}{base_path}`, the form the token endpoints are built on.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.origin, self.base_path)
    }
}

/// The app identity.
pub struct AppConfig {
    /// The key under `apps:`, or `default` for the `app:` shorthand: how
    /// routes, logs, metrics and `login --app` name it.
    pub name: Arc<str>,
    /// The JWT issuer.
    pub id: u64,
    /// Parsed once; signing a JWT needs no parsing.
    pub key: jsonwebtoken::EncodingKey,
    /// Identifies (app id, key, upstream): token caches are keyed by it, so a
    /// reload that changes any of them stops using tokens minted under the old.
    pub fingerprint: AppFingerprint,
    /// OAuth client id (user routes only).
    pub client_id: Option<String>,
    /// OAuth client secret (user routes only).
    pub client_secret: Option<Secret>,
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What identifies an app's credentials: SHA-256 over the app id, the
/// upstream and the private key. Token caches, signed JWTs and installation
/// directories are keyed by it. Its `Debug` shows a short hex prefix, enough
/// to tell two apart in a log and too little to say anything about the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AppFingerprint([u8; 32]);

/// Hashes the first 8 bytes only: a SHA-256 is uniform, so they spread as
/// well as all 32, and every request's token and quota lookups hash one.
/// (Equal fingerprints have equal prefixes, as `Hash` requires.)
impl std::hash::Hash for AppFingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

impl AppFingerprint {
    /// The fingerprint of app `id` with key `pem`, calling `upstream_base`.
    pub fn of(id: u64, upstream_base: &str, pem: &Secret) -> AppFingerprint {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(id.to_be_bytes());
        hasher.update(upstream_base);
        // Ends the upstream, so no (upstream, key) pair hashes like another.
        hasher.update([0]);
        hasher.update(pem.expose());
        AppFingerprint(hasher.finalize().into())
    }
}

impl AppFingerprint {
    /// A short hex form naming the app in shared keys (Redis): 16 bytes,
    /// enough to keep apps apart, and one-way like the whole digest.
    pub fn short_hex(&self) -> String {
        hex::encode(&self.0[..16])
    }
}

impl fmt::Debug for AppFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppFingerprint({}..)", hex::encode(&self.0[..4]))
    }
}

/// The OAuth endpoints of the user flow, validated from the `oauth:` section
/// (whose raw form is [`file::OAuthFile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    /// The platform's page the browser is sent to, to authorize the app.
    pub authorize_url: url::Url,
    /// The proxy's callback, where the platform sends the browser back.
    pub redirect_uri: url::Url,
    /// Where codes are exchanged and grants refreshed.
    pub token_url: url::Url,
}

/// A local caller.
#[derive(Clone)]
pub struct ClientConfig {
    pub name: Arc<str>,
    /// SHA-256 of the key, taken once at load: requests compare digests (of
    /// equal length, in constant time) and never hash the configured keys.
    pub key_digest: [u8; 32],
}

impl ClientConfig {
    pub fn new(name: &str, key: &Secret) -> Self {
        use sha2::{Digest, Sha256};
        ClientConfig {
            name: name.into(),
            key_digest: Sha256::digest(key.expose().as_bytes()).into(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One problem found while loading, naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `routes[2].match.path_prefix`.
    pub field: String,
    pub message: String,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Why a config could not be loaded: every problem found, not just the first.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
    /// Every file the rejected config names, itself first when it came from
    /// a file: a failed reload is retried when one of these changes (say,
    /// the key file it names appears).
    pub files: Vec<PathBuf>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// The app called `name`.
    pub fn app_named(&self, name: &str) -> Option<&Arc<AppConfig>> {
        self.apps.iter().find(|a| &*a.name == name)
    }

    /// The app `route`'s credential uses.
    pub fn app_of(&self, route: &crate::routes::Route) -> &Arc<AppConfig> {
        self.app_named(&route.app).unwrap_or(&self.app)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            problems: vec![Problem {
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
                line: None,
            }],
            files: vec![path.to_path_buf()],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config =
            Self::from_yaml(&text, base, &path.display().to_string()).map_err(|mut e| {
                e.files.insert(0, path.to_path_buf());
                e
            })?;
        config.path = Some(path.to_path_buf());
        config.files.insert(0, path.to_path_buf());
        Ok(config)
    }

    /// Validates config text; relative paths resolve against `base`.
    pub fn from_yaml(text: &str, base: &Path, source_name: &str) -> Result<Config, ConfigError> {
        validate::parse_and_validate(text, base).map_err(|rejected| ConfigError {
            source_name: source_name.to_owned(),
            problems: rejected.problems,
            files: rejected.files,
        })
    }

    /// A human summary of listeners and routes, for `check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "listen:   {}", listen.join(", "));
        let _ = writeln!(out, "upstream: {}", self.upstream.base_url());
        // One app shows as before `apps:` existed; several by name.
        match &self.apps[..] {
            [app] => {
                let _ = writeln!(out, "app:      {}", app.id);
            }
            apps => {
                for app in apps {
                    let _ = writeln!(out, "app:      {} (id {})", app.name, app.id);
                }
            }
        }
        if !self.clients.is_empty() {
            let names: Vec<&str> = self.clients.iter().map(|c| &*c.name).collect();
            let _ = writeln!(out, "clients:  {}", names.join(", "));
        }
        if let Some(redis) = &self.store_redis {
            // Host only: the URL may hold a password.
            let _ = writeln!(
                out,
                "store:    redis {} (key prefix \"{}\")",
                redis.shown(),
                redis.key_prefix
            );
        } else if let Some(path) = &self.store_path {
            let _ = writeln!(out, "store:    {}", path.display());
        }
        let _ = writeln!(out, "routes:");
        for route in self.routes.iter() {
            let _ = writeln!(out, "  {route}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_apps_apart_and_debug_shows_only_a_prefix() {
        let key = Secret::new("-----BEGIN PRIVATE KEY-----");
        let a = AppFingerprint::of(75, "https://api.atomgit.com", &key);
        assert_eq!(a, AppFingerprint::of(75, "https://api.atomgit.com", &key));
        assert_ne!(a, AppFingerprint::of(76, "https://api.atomgit.com", &key));
        assert_ne!(a, AppFingerprint::of(75, "https://other.example", &key));
        assert_ne!(
            a,
            AppFingerprint::of(75, "https://api.atomgit.com", &Secret::new("other"))
        );
        let shown = format!("{a:?}");
        assert_eq!(shown.len(), "AppFingerprint(12345678..)".len(), "{shown}");
    }
}
