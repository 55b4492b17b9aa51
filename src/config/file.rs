//! The config file as written: serde types that mirror the YAML one to one.
//!
//! Nothing here is trusted or interpreted; `validate` turns these into the
//! runtime [`Config`](super::Config). Every struct denies unknown keys so a
//! typo is an error, not a silently ignored setting.

use serde::Deserialize;
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `host:port` or `unix:/path`; default `127.0.0.1:8080`.
    pub listen: Option<Vec<String>>,
    /// Open API base; default `https://api.atomgit.com`.
    pub upstream: Option<String>,
    /// Extra PEM CA bundle trusted for the upstream, on top of the webpki roots
    /// (for a platform behind a private CA).
    pub upstream_ca_file: Option<PathBuf>,
    /// The app identity used to mint installation tokens and exchange user
    /// codes: the one-app shorthand of `apps:` (named `default`).
    pub app: Option<AppFile>,
    /// Several app identities by name; routes name theirs with `app:`.
    pub apps: Option<std::collections::BTreeMap<String, AppFile>>,
    /// OAuth settings; only user routes need them.
    pub oauth: Option<OAuthFile>,
    /// Where durable user grants live.
    pub store: Option<StoreFile>,
    /// Local callers and their keys. Absent: no caller authentication.
    pub clients: Option<Vec<ClientFile>>,
    /// Mode of unix socket listeners, octal (default "0660").
    pub unix_socket_mode: Option<FileMode>,
    /// Opt out of the refusal to listen on a non-loopback address without `clients:`.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Token lifetime policy.
    pub tokens: Option<TokensFile>,
    /// Upstream, connection and shutdown timeouts.
    pub timeouts: Option<TimeoutsFile>,
    /// Caps on what callers can make the proxy hold: header size,
    /// connections, concurrent upstream requests.
    pub limits: Option<LimitsFile>,
    /// Web origins (`scheme://host[:port]`) whose cross-site requests are
    /// served; every other request carrying `Origin` is refused.
    pub allowed_origins: Option<Vec<String>>,
    /// Extra `Host` names served when no `clients:` are configured (beyond
    /// loopback, listen addresses and routes' `match.host`): the DNS
    /// rebinding defence.
    pub allowed_hosts: Option<Vec<String>>,
    /// Sent as `X-Api-Version` on forwarded requests that carry none.
    pub api_version: Option<String>,
    /// A token bucket per credential: `per_second`, `burst`, `max_wait`.
    pub quota: Option<QuotaFile>,
    /// The conditional cache: `max_bytes`, `max_entry_bytes`.
    pub cache: Option<CacheFile>,
    /// Checked in order; first match wins.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// One JSON line per forwarded request on the `audit` log target.
    #[serde(default)]
    pub audit: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    /// Requests per second per credential; default 10, 0 turns smoothing off.
    pub per_second: Option<u32>,
    /// Requests at once after a quiet spell; default `per_second`.
    pub burst: Option<u32>,
    /// Longest wait for a slot before 429; default `5s`.
    pub max_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Bytes all entries may hold; default `64MiB`, 0 turns caching off.
    pub max_bytes: Option<CacheSizeFile>,
    /// The largest body kept; default `1MiB`.
    pub max_entry_bytes: Option<CacheSizeFile>,
}

/// A `cache:` size, written like [`ByteSizeFile`]; a type of its own so a
/// wrongly shaped value is reported under `cache`, not `limits`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CacheSizeFile {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    /// The JWT issuer. The docs write it as a string ("75"), configs as a number.
    pub id: AppId,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub private_key: SecretFile,
    pub client_id: Option<String>,
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub client_secret: Option<SecretFile>,
}

/// A file mode: `"0660"`, or the number 660 read as octal digits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileMode {
    Number(u32),
    Text(String),
}

/// An app id as a YAML number or a numeric string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AppId {
    Number(u64),
    Text(String),
}

/// Where a secret comes from. Never the secret itself in a log: see `secret.rs`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretFile {
    File(PathBuf),
    Env(String),
    Value(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthFile {
    pub authorize_url: Option<String>,
    pub redirect_uri: Option<String>,
    pub token_url: Option<String>,
}

/// Where shared state lives: exactly one of `path` (a JSON file) and `redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub path: Option<PathBuf>,
    /// Fleet mode: grants, locks, logins and installation tokens in Redis.
    pub redis: Option<RedisFile>,
    /// 32 random bytes, base64: encrypts tokens at rest and derives the
    /// login-link key. Required with `redis`.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub encryption_key: Option<SecretFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[:password@]host:port/db` or `rediss://` (TLS); a secret
    /// source, since the URL may hold a password.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub url: SecretFile,
    /// Prefix of every key (default `atomgit-proxy:`): fleets sharing one
    /// Redis stay apart.
    pub key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub name: String,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub key: SecretFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Refresh this long before expiry (default `5m`, capped at half a token's life).
    pub refresh_margin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TCP (and TLS) connect to the upstream; default `10s`.
    pub connect: Option<String>,
    /// From sending the request to the upstream's response headers; default `60s`.
    pub response: Option<String>,
    /// How long shutdown waits for in-flight requests; default `25s`.
    pub shutdown: Option<String>,
    /// A connection with no request in flight is closed after this; default `60s`.
    pub idle: Option<String>,
    /// From accept to a request's complete headers; default `30s`.
    pub header_read: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request head (request line and headers); default `64KiB`.
    pub max_header_bytes: Option<ByteSizeFile>,
    /// Open inbound connections; default 4096. Past it, new connections
    /// wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// Requests in flight to the platform; default 512. More wait.
    pub max_upstream_requests: Option<usize>,
}

/// A size: a plain number of bytes, or text such as `64KiB` or `1MiB`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ByteSizeFile {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchFile,
    #[serde(default)]
    pub strip_prefix: bool,
    pub installation: Option<InstallationFile>,
    pub user: Option<String>,
    /// This route's `X-Api-Version`, over the top-level `api_version`.
    pub api_version: Option<String>,
    /// The name of the app under `apps:` this route's credential uses;
    /// optional when there is only one.
    pub app: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub clients: Option<Vec<String>>,
}

/// `{ id: 14 }`, `{ account: name }` or `{ auto: true }`, each optionally
/// scoped (`repositories`, `permissions`), or the word `auto`.
#[derive(Debug)]
pub enum InstallationFile {
    /// The word `auto`.
    Auto,
    Spec(InstallationSpecFile),
}

/// The mapping form of `installation:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallationSpecFile {
    pub id: Option<u64>,
    pub account: Option<String>,
    /// `auto: true`: the owner named by the path, like the word `auto`.
    pub auto: Option<bool>,
    /// Repository names (under the installation's account) the token is
    /// limited to.
    pub repositories: Option<Vec<String>>,
    /// Permission name to `read` or `write`: the token gets no more.
    pub permissions: Option<std::collections::BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for InstallationFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = InstallationFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("auto or a mapping")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "auto" => Ok(InstallationFile::Auto),
                    // The value is never quoted: it could be a pasted secret.
                    _ => Err(E::invalid_value(
                        serde::de::Unexpected::Other("a word other than auto"),
                        &self,
                    )),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                InstallationSpecFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(InstallationFile::Spec)
            }
        }
        d.deserialize_any(Visitor)
    }
}
