//! atomgit-proxy: plain HTTP in, AtomGit Open API out, with a fresh app
//! installation (`ats_`) or user (`atu_`) token injected into every request.
//!
//! # Layout
//! The modules in the order a request meets them:
//! - [`app`]: a running proxy: start, signals, shutdown.
//! - [`server`]: listeners, the accept loop, the worker threads (one
//!   single-threaded runtime per core, each serving the connections handed
//!   to it), the HTTP/1.1 fast path each connection starts on (hyper takes
//!   over for anything else), connection caps and timeouts, graceful
//!   shutdown.
//! - [`proxy`]: the service: browser guards ([`proxy::guard`]), caller keys
//!   ([`proxy::clients`]), route selection, header surgery
//!   ([`proxy::headers`]), the quota and cache around each exchange
//!   (`proxy::spend`), the streaming forward and its one resend after a
//!   refused token (`proxy::retry`, inside the exchange's one quota slot).
//! - [`quota`]: each credential's budget as the platform reports it, and
//!   the token bucket that spaces its requests, behind a backend interface:
//!   per process, or shared by a fleet in Redis (`quota::redis_backend`).
//! - [`cache`]: the conditional cache (revalidated 200s from 304s) and the
//!   sharing of identical GETs in flight.
//! - [`state`]: what every request shares: the current snapshot behind
//!   `ArcSwap`, the credential caches and metrics.
//! - [`config`]: the YAML file ([`config::file`]), validated once into the
//!   immutable [`config::Config`] a snapshot holds.
//! - [`admin`]: the `/_proxy/` endpoints (health, readiness, metrics, the
//!   login pages), which the service dispatches to.
//! - [`routes`]: compiled routes, matching, path checks, token scopes
//!   ([`routes::scope`]).
//! - [`credentials`]: the app JWT of each app and its clock offset
//!   ([`credentials::clock`]), installation tokens (scoped or not), user
//!   grants and their store, the token endpoint, the single-flight token
//!   cache.
//! - [`store`]: the state replicas share behind one trait: the grant file,
//!   or Redis for a fleet (grants with compare-and-set, refresh and mint
//!   locks, logins, shared installation tokens per app and scope,
//!   encryption at rest).
//! - [`upstream`]: pooled HTTP clients to the platform, and each worker
//!   thread's own upstream connections (the fast path's, on [`wire`]).
//! - [`wire`]: HTTP/1.1 on the wire for the fast path: heads parsed with
//!   `httparse` and written back, body framing, a worker's upstream
//!   connections and the response body read straight off one.
//! - [`body`]: the response body type (hyper's upstream stream or the fast
//!   path's), the caller's body (hyper's, or none on the fast path), and
//!   the caller's body on its way upstream, watched for the caller's own
//!   faults; [`body::tee`] streams an
//!   answer while copying it for the cache.
//! - [`error`]: every error the proxy answers itself, mapped in one place.
//! - [`metrics`]: the Prometheus registry and the per-request bookkeeping.
//! - [`activity`]: recent upstream errors and quota for the status page, and
//!   the audit trail (`audit: true`).
//! - [`ops`]: the operator commands beside `serve`: `healthcheck`, and
//!   waiting for a login (`login --wait`).
//! - [`reload`]: building and swapping a new snapshot; the file watcher.
//! - `dev` (with the default `dev` feature): the zero-setup demo, run against
//!   the fake AtomGit of the workspace's `atomgit-fake` crate (which the tests
//!   use too).
//!
//! Imports run one way: a module uses only modules below it in the call
//! chain (`proxy` dispatches to `admin`, which never uses `proxy`; `error`,
//! `routes`, `config`, `body` and `wire` use nothing that uses them).

#![forbid(unsafe_code)]

pub mod activity;
pub mod admin;
pub mod app;
pub mod body;
pub mod cache;
pub mod config;
pub mod credentials;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod upstream;
pub mod wire;

/// Sent on the proxy's own calls to the platform.
pub const USER_AGENT: &str = concat!("atomgit-proxy/", env!("CARGO_PKG_VERSION"));
