//! Lists an organisation's repositories through the proxy, following
//! pagination.
//!
//! The caller sends no token: the proxy injects one. The upstream's
//! `Link: <...>; rel="next"` headers come back rewritten to point at the
//! proxy, so following them keeps every page on the proxy.
//!
//! ```text
//! cargo run -- dev &                      # or a proxy in front of the real platform
//! cargo run --example list_repos -- http://127.0.0.1:8080 yanqianyu
//! ```
//!
//! Set `PROXY_KEY` to send a client key when the proxy has `clients:`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, LINK, USER_AGENT};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Stop after this many pages, whatever the links say.
const MAX_PAGES: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let org = args.next().unwrap_or_else(|| "yanqianyu".to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let proxy: Uri = base.parse()?;
    let key = std::env::var("PROXY_KEY").ok().filter(|k| !k.is_empty());

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut next: Option<Uri> = Some(format!("{base}/orgs/{org}/repos").parse()?);
    let (mut pages, mut repos) = (0, 0);
    while let Some(uri) = next.take() {
        if pages == MAX_PAGES {
            eprintln!("stopping after {MAX_PAGES} pages");
            break;
        }
        pages += 1;
        eprintln!("GET {uri}");
        let mut req = Request::get(uri).header(USER_AGENT, "atomgit-proxy-example/list_repos");
        if let Some(key) = &key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let resp = client.request(req.body(Empty::new())?).await?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        if !status.is_success() {
            // The proxy's own errors carry `x-atomgit-proxy-error` and a JSON body.
            let code = parts
                .headers
                .get("x-atomgit-proxy-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(from the platform)");
            return Err(format!("{status} {code}: {}", String::from_utf8_lossy(&body)).into());
        }
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        for repo in page.as_array().ok_or("expected a JSON array of repos")? {
            println!("{}", repo["name"].as_str().unwrap_or("(no name)"));
            repos += 1;
        }
        next = match next_link(&parts.headers) {
            None => None,
            Some(link) => Some(through_proxy(&link, &proxy)?),
        };
    }
    eprintln!("{repos} repos in {pages} pages");
    Ok(())
}

/// The target of the first `rel="next"` entry in the `Link` headers.
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(link_entries)
        .find(|(_, params)| {
            params.split(';').any(|param| {
                let Some((name, value)) = param.split_once('=') else {
                    return false;
                };
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
        })
        .map(|(target, _)| target.to_owned())
}

/// `<target>; params, <target>; params` as (target, params) pairs. Targets are
/// cut at `<`/`>`, so a comma inside a URL does not split an entry.
fn link_entries(value: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(len) = rest[open..].find('>') else {
            break;
        };
        let target = &rest[open + 1..open + len];
        rest = &rest[open + len + 1..];
        let params = rest.find('<').map_or(rest, |next| &rest[..next]);
        out.push((target, params.trim().trim_end_matches(',')));
    }
    out
}

/// The next page's URI, which must be on the proxy: a link still pointing at
/// the platform would bypass the proxy (and its token).
fn through_proxy(link: &str, proxy: &Uri) -> Result<Uri, Error> {
    let uri: Uri = if link.starts_with('/') {
        format!(
            "{}://{}{link}",
            proxy.scheme_str().unwrap_or("http"),
            proxy.authority().map_or("", |a| a.as_str())
        )
        .parse()?
    } else {
        link.parse()?
    };
    if uri.authority() != proxy.authority() {
        return Err(format!("the next link {link} does not point at the proxy {proxy}").into());
    }
    Ok(uri)
}
