//! "The API": every path that is not app identity or OAuth. Checks the bearer
//! token the proxy injected (issued, unexpired, one header, installation
//! scope) and then serves the test endpoints: paginated repos, redirects,
//! streamed upload/download, slow answers, and an echo of everything else.

use std::time::Duration;

use http::header::{AUTHORIZATION, LINK};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::TokenOwner;
use super::resources;
use super::respond::{self, Resp};
use super::state::FakeState;

/// Number of repositories every org pretends to have.
const REPO_COUNT: u64 = 5;

pub(super) async fn handle(shared: &FakeState, req: Request<Incoming>) -> Resp {
    let _counted = InFlight::enter(shared);
    let owner = match authenticate(shared, req.headers()) {
        Ok(owner) => owner,
        Err((status, msg)) => {
            // Read the body first, as the platform's front end does: a
            // refusal sent mid-upload would reach the proxy as a broken
            // pipe instead of the 401 it is.
            drain(req.into_body()).await;
            return respond::message(status, msg);
        }
    };
    // Every authenticated answer reports the credential's budget.
    let limits = match shared.lock().budgets.spend(&owner) {
        Ok(headers) => headers,
        Err(refusal) => return *refusal,
    };
    let mut resp = answer(shared, req, owner).await;
    resp.headers_mut().extend(limits);
    resp
}

async fn answer(shared: &FakeState, req: Request<Incoming>, owner: TokenOwner) -> Resp {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();

    let account = match &owner {
        TokenOwner::Installation(id) => {
            let account = shared.lock().account_of(*id).map(str::to_owned);
            if !in_scope(&path, account.as_deref()) {
                return respond::message(StatusCode::FORBIDDEN, "installation not permitted");
            }
            // A scoped token does not see other repositories at all.
            if !in_repositories(&path, repositories_of(shared, req.headers()).as_deref()) {
                return respond::message(StatusCode::NOT_FOUND, "Not Found");
            }
            account
        }
        TokenOwner::User(_) => None,
    };

    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (_, ["user"]) => match &owner {
            TokenOwner::User(user) => {
                respond::json(StatusCode::OK, &json!({ "login": user, "name": user }))
            }
            TokenOwner::Installation(_) => respond::message(
                StatusCode::FORBIDDEN,
                "Resource not accessible by integration",
            ),
        },
        (&Method::GET, ["orgs", org, "repos"]) => list_repos(shared, org, query.as_deref()),
        (&Method::GET, ["etag", name] | ["orgs", _, "etag", name]) => {
            let (current, gate) = {
                let inner = shared.lock();
                (inner.resources.current(name), inner.resources.gate.clone())
            };
            let owner = owner_label(&owner);
            resources::serve(current, gate, name, &owner, query.as_deref(), req.headers()).await
        }
        (_, ["redirect", ..]) => {
            let org = account.as_deref().unwrap_or("x");
            respond::redirect(&format!("{}/orgs/{org}/repos", shared.base_url))
        }
        (&Method::POST, ["upload"]) => upload(req.into_body()).await,
        (&Method::GET, ["download", n]) => match n.parse::<u64>() {
            Ok(n) => respond::download(n),
            Err(_) => respond::message(StatusCode::BAD_REQUEST, "byte count expected"),
        },
        (&Method::GET, ["slow", ms]) => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                respond::json(StatusCode::OK, &json!({ "slept": ms }))
            }
            Err(_) => respond::message(StatusCode::BAD_REQUEST, "milliseconds expected"),
        },
        _ => {
            let owner_label = owner_label(&owner);
            respond::json(
                StatusCode::OK,
                &json!({
                    "method": method.as_str(),
                    "path": path,
                    "query": query,
                    "owner": owner_label,
                }),
            )
        }
    }
}

/// Reads and discards a body, up to 16 MiB.
async fn drain(mut body: Incoming) {
    let mut left: usize = 16 << 20;
    while let Some(Ok(frame)) = body.frame().await {
        left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len()));
        if left == 0 {
            break;
        }
    }
}

fn owner_label(owner: &TokenOwner) -> String {
    match owner {
        TokenOwner::Installation(id) => format!("installation:{id}"),
        TokenOwner::User(user) => format!("user:{user}"),
    }
}

/// Counts an API request as being answered until dropped (also when the
/// caller hangs up and the handler is dropped half-way).
struct InFlight<'a>(&'a FakeState);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a FakeState) -> Self {
        let mut inner = shared.lock();
        inner.api_in_flight += 1;
        inner.api_max_in_flight = inner.api_max_in_flight.max(inner.api_in_flight);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().api_in_flight -= 1;
    }
}

/// Resolves the request's bearer token to its owner, or the error status and
/// message to answer with.
fn authenticate(
    shared: &FakeState,
    headers: &HeaderMap,
) -> Result<TokenOwner, (StatusCode, &'static str)> {
    const BAD: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "Bad credentials");
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(v), None) => v,
        (None, _) => return Err((StatusCode::UNAUTHORIZED, "Requires authentication")),
        (Some(_), Some(_)) => {
            return Err((StatusCode::BAD_REQUEST, "multiple authorization headers"));
        }
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(BAD)?;
    let mut inner = shared.lock();
    let (owner, expires) = match inner.tokens.get(token) {
        Some(rec) if rec.revoked => {
            inner.revoked_seen += 1;
            return Err(BAD);
        }
        Some(rec) => (rec.owner.clone(), rec.expires),
        None => return Err(BAD),
    };

    if Instant::now() >= expires {
        inner.expired_seen += 1;
        return Err((StatusCode::UNAUTHORIZED, "token expired"));
    }
    Ok(owner)
}

/// The repositories the request's (already authenticated) token is
/// limited to.
fn repositories_of(shared: &FakeState, headers: &HeaderMap) -> Option<Vec<String>> {
    let token = headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    shared.lock().tokens.get(token)?.repositories.clone()
}

/// Whether `/repos/{owner}/{repo}/...` names a repository in `allowed`
/// (`None`: any; paths not under `/repos/` pass).
fn in_repositories(path: &str, allowed: Option<&[String]>) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    let mut segments = path.split('/').skip(1);
    match (segments.next(), segments.next(), segments.next()) {
        (Some("repos"), Some(_), Some(repo)) => {
            let repo = percent_decode_str(repo).decode_utf8_lossy().to_lowercase();
            allowed.contains(&repo)
        }
        _ => true,
    }
}

/// Installation tokens only reach their own account's `/orgs/{org}`,
/// `/repos/{owner}` and `/users/{user}` paths (case-insensitively).
fn in_scope(path: &str, account: Option<&str>) -> bool {
    let mut segments = path.split('/').skip(1);
    let (Some(kind), Some(owner)) = (segments.next(), segments.next()) else {
        return true;
    };
    if !matches!(kind, "orgs" | "repos" | "users") || owner.is_empty() {
        return true;
    }
    let owner = percent_decode_str(owner).decode_utf8_lossy();
    account.is_some_and(|a| a.eq_ignore_ascii_case(&owner))
}

/// `GET /orgs/{org}/repos`: GitHub-style pagination with absolute `Link`s.
fn list_repos(shared: &FakeState, org: &str, query: Option<&str>) -> Resp {
    let mut per_page: u64 = 2;
    let mut page: u64 = 1;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "per_page" => per_page = v.parse().unwrap_or(per_page).clamp(1, 100),
            "page" => page = v.parse().unwrap_or(page).max(1),
            _ => {}
        }
    }
    let org_name = percent_decode_str(org).decode_utf8_lossy();
    let last = REPO_COUNT.div_ceil(per_page).max(1);
    let first_index = (page - 1).saturating_mul(per_page);
    let repos: Vec<_> = (first_index..REPO_COUNT.min(first_index.saturating_add(per_page)))
        .map(|i| {
            let name = format!("repo-{}", i + 1);
            json!({ "name": name, "full_name": format!("{org_name}/{name}") })
        })
        .collect();

    let link_to = |p: u64, rel: &str| {
        format!(
            "<{}/orgs/{org}/repos?page={p}&per_page={per_page}>; rel=\"{rel}\"",
            shared.base_url
        )
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link_to((page - 1).min(last), "prev"));
    }
    if page < last {
        links.push(link_to(page + 1, "next"));
        links.push(link_to(last, "last"));
    }
    if page > 1 {
        links.push(link_to(1, "first"));
    }
    let mut resp = respond::json(StatusCode::OK, &serde_json::Value::Array(repos));
    if !links.is_empty() {
        respond::add_header(&mut resp, LINK, &links.join(", "));
    }
    resp
}

/// `POST /upload`: hashes the body frame by frame, never holding it whole.
async fn upload(mut body: Incoming) -> Resp {
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return respond::message(
                    StatusCode::BAD_REQUEST,
                    &format!("error reading body: {e}"),
                );
            }
        }
    }
    respond::json(
        StatusCode::OK,
        &json!({ "sha256": hex::encode(hasher.finalize()), "bytes": bytes }),
    )
}
