//! atomgit-proxy: plain HTTP in, AtomGit Open API out, with a fresh app
//! installation (`ats_`) or user (`atu_`) token injected into every request.
//!
//! # Layout
//! The modules follow a request's path:
//! - [`config`]: the YAML file ([`config::file`]), validated once into an
//!   immutable [`config::Config`] snapshot.
//! - [`server`]: listeners, the accept loop, graceful shutdown.
//! - [`proxy`]: the service; caller keys ([`proxy::clients`]), route
//!   selection, header surgery ([`proxy::headers`]) and streaming forward.
//! - [`routes`]: compiled routes and matching.
//! - [`credentials`]: the app JWT, installation discovery and tokens, the
//!   single-flight token cache.
//! - [`upstream`]: pooled HTTP clients to the platform; [`caller_body`]: the
//!   caller's body on its way there, watched for the caller's own faults.
//! - [`local`]: the `/_proxy/` endpoints (health, readiness, metrics).
//! - [`error`]: every error the proxy answers itself, mapped in one place.
//! - [`app`]: a running proxy: start, signals, shutdown.
//! - [`reload`]: building and swapping a new snapshot; the file watcher.
//! - `dev` (with the default `dev` feature): the zero-setup demo, run against
//!   the fake AtomGit of the workspace's `atomgit-fake` crate (which the tests
//!   use too).

#![forbid(unsafe_code)]

pub mod app;
pub mod caller_body;
pub mod config;
pub mod credentials;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod local;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod upstream;

/// Sent on the proxy's own calls to the platform.
pub const USER_AGENT: &str = concat!("atomgit-proxy/", env!("CARGO_PKG_VERSION"));
