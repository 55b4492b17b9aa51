//! `GET /_proxy/readyz`: whether this replica should get traffic.
//!
//! Plain readyz answers 200 while the config is loaded and the listeners
//! serve, whatever one credential's state: a user without a grant, or the
//! platform being down, is the same on every replica, and taking them all
//! out of service would turn one route's trouble into a full outage. The
//! body still lists each credential's state. `?strict=1` is the old meaning
//! for deploy gates: 503 unless every credential can produce a token.
//!
//! The credential checks go through the token caches, so a cached token
//! answers at once and a failure backs off instead of being retried per
//! probe. Each check runs in its own task and the probe waits at most
//! [`CHECK_WAIT`]: a hanging platform cannot hang the probe, and a check that
//! outlives it finishes anyway, for the next probe to read.
//!
//! With `clients:` set, who asks matters: the detail (route, account and user
//! names, errors, the last reload error) is shown only to a caller presenting
//! a valid key. Others get `{"ready": ...}` with the same status (never 401,
//! so a probe without a key keeps working).

use crate::body::Body;
use crate::error::ProxyError;
use crate::routes::{InstallationSelector, Route, RouteCredential};
use crate::state::{Shared, Snapshot};
use http::{Response, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a probe waits for credential checks before answering with what
/// it knows (probes commonly time out after 1 to 5 s).
pub const CHECK_WAIT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Readiness {
    /// Plain: config loaded and serving. Strict: every credential ready.
    ready: bool,
    /// Shown only to callers allowed to see the deployment's detail.
    #[serde(flatten)]
    detail: Option<Detail>,
}

#[derive(Serialize)]
struct Detail {
    /// Every credential can produce a token (what strict `ready` means).
    credentials_ready: bool,
    config: ConfigReadiness,
    /// The store's backend and whether it answers (`ok`/`unavailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<crate::store::StoreHealth>,
    credentials: Vec<CredentialReadiness>,
    apps: Vec<AppReadiness>,
    /// Each credential's budget as the platform last reported it (remaining,
    /// reset), and whether the proxy is answering 429 for it meanwhile.
    quota: Vec<crate::quota::CredentialQuota>,
}

/// One app identity, as readiness shows it.
#[derive(Serialize)]
struct AppReadiness {
    name: String,
    id: u64,
    /// The platform's clock minus ours, once a refused JWT showed it.
    clock_offset_seconds: i64,
}

#[derive(Serialize)]
struct ConfigReadiness {
    loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload_error: Option<String>,
}

#[derive(Serialize)]
pub struct CredentialReadiness {
    pub credential: String,
    pub routes: Vec<String>,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The check did not finish within the wait; it goes on in the
    /// background and a later probe reads its outcome.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// Checks every distinct credential the routes use, waiting at most `wait`.
/// Cached tokens answer at once; a missing one is minted, which is what
/// readiness should prove.
pub async fn check_credentials(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    wait: Duration,
) -> Vec<CredentialReadiness> {
    // One check per credential: same selector, scope and app.
    let mut seen: Vec<(Route, Vec<String>)> = Vec::new();
    for route in snap.config.routes.iter() {
        let same = |r: &Route| {
            r.credential == route.credential && r.scope == route.scope && r.app == route.app
        };
        match seen.iter_mut().find(|(r, _)| same(r)) {
            Some((_, routes)) => routes.push(route.name.to_string()),
            None => seen.push((route.clone(), vec![route.name.to_string()])),
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let checks = seen.into_iter().map(|(route, routes)| {
        let mut credential = route.credential.to_string();
        if let Some(scope) = &route.scope {
            credential.push_str(&format!(" scoped to {scope}"));
        }
        if snap.config.apps.len() > 1 {
            credential.push_str(&format!(" (app {})", route.app));
        }
        // Its own task, so a check cut off by the deadline still records its
        // outcome (a listing, unlike a mint, runs in the caller's task).
        let task = tokio::spawn(check(shared.clone(), snap.clone(), route));
        async move {
            let (ready, error, reason, pending) =
                match tokio::time::timeout_at(deadline, task).await {
                    Ok(Ok(Ok(()))) => (true, None, None, false),
                    Ok(Ok(Err(e))) => {
                        let reason = e.to_string();
                        let (_, code) = ProxyError::Credential(e).status_and_code();
                        (false, Some(code), Some(reason), false)
                    }
                    Ok(Err(join)) => (
                        false,
                        Some("internal_error"),
                        Some(format!("the check failed: {join}")),
                        false,
                    ),
                    Err(_) => (
                        false,
                        None,
                        Some(format!(
                            "still being checked after {}s; a later probe shows the outcome",
                            wait.as_secs()
                        )),
                        true,
                    ),
                };
            CredentialReadiness {
                credential,
                routes,
                ready,
                error,
                reason,
                pending,
            }
        }
    });
    futures_util::future::join_all(checks).await
}

async fn check(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    route: Route,
) -> Result<(), crate::credentials::CredentialError> {
    let creds = &shared.credentials;
    let ctx = snap.context_for(&route);
    match &route.credential {
        RouteCredential::Installation(InstallationSelector::Auto) => {
            creds.check_listing(&ctx).await
        }
        other => creds.token(&ctx, other, "/").await.map(|_| ()),
    }
}

/// The probe's answer. `known_caller`: the request presented a valid client
/// key, or none is needed.
pub async fn readyz(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    req: &http::request::Parts,
    known_caller: bool,
) -> Response<Body> {
    let strict = url::form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "strict" && matches!(&*v, "" | "1" | "true"));
    // Without `clients:` anyone who reaches the proxy may use it (and is a
    // known caller), so nothing here is more than they can learn anyway.
    let detail_allowed = known_caller;
    if !strict && !detail_allowed {
        // Nothing to show and nothing that changes the answer: no check.
        return json(
            StatusCode::OK,
            &Readiness {
                ready: true,
                detail: None,
            },
        );
    }
    let (credentials, store) = futures_util::future::join(
        check_credentials(shared, snap, CHECK_WAIT),
        crate::store::health_of(snap.store.as_ref()),
    )
    .await;
    let credentials_ready = credentials.iter().all(|c| c.ready);
    // A failed reload leaves the previous config serving, so it is reported
    // but does not take the replica out of rotation.
    let last_reload_error = shared
        .reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last_error
        .clone();
    let ready = !strict || credentials_ready;
    let body = Readiness {
        ready,
        detail: detail_allowed.then_some(Detail {
            credentials_ready,
            config: ConfigReadiness {
                loaded: true,
                last_reload_error,
            },
            store,
            credentials,
            apps: apps(shared, snap),
            quota: shared.quota.snapshot(),
        }),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

fn apps(shared: &Shared, snap: &Snapshot) -> Vec<AppReadiness> {
    snap.config
        .apps
        .iter()
        .map(|app| AppReadiness {
            name: app.name.to_string(),
            id: app.id,
            clock_offset_seconds: shared.credentials.clock_offset(app),
        })
        .collect()
}

fn json(status: StatusCode, body: &Readiness) -> Response<Body> {
    let json = serde_json::to_string_pretty(body).unwrap_or_default();
    super::text(status, "application/json", json)
}
