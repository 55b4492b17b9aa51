//! A tiny cookie-keeping "browser": follows redirects through the login and
//! carries the proxy's cookies, as a person's browser would.

use super::{HttpClient, Reply, client, get};
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use url::Url;

/// One step of a browser's navigation.
#[derive(Debug, Clone)]
pub struct Hop {
    pub url: Url,
    pub status: StatusCode,
    pub location: Option<Url>,
}

/// Where a navigation ended.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub url: Url,
    pub body: String,
    pub hops: Vec<Hop>,
}

impl Page {
    /// The `code` and `state` the platform redirected to the callback with.
    pub fn callback_params(&self) -> Option<(String, String)> {
        self.hops.iter().find_map(|h| {
            let loc = h.location.as_ref()?;
            if loc.path() != "/_proxy/oauth/callback" {
                return None;
            }
            let q: BTreeMap<String, String> = loc.query_pairs().into_owned().collect();
            Some((q.get("code")?.clone(), q.get("state")?.clone()))
        })
    }
}

/// A minimal browser: follows `Location` up to 10 hops and keeps the
/// proxy's cookies (honouring `Path` and `Max-Age=0`), as a person's browser
/// would across the login.
pub struct Browser {
    client: HttpClient,
    /// `host:port` whose cookies are kept; the fake sets none.
    proxy: String,
    /// name → (value, path)
    pub cookies: BTreeMap<String, (String, String)>,
    /// `Sec-Fetch-Site` of the next request: `none` for a link the person
    /// opens, `cross-site` once a redirect chain has passed through the
    /// platform (as a real browser marks the OAuth callback).
    fetch_site: &'static str,
}

impl Browser {
    pub fn new(proxy: SocketAddr) -> Browser {
        Browser {
            client: client(),
            proxy: proxy.to_string(),
            cookies: BTreeMap::new(),
            fetch_site: "none",
        }
    }

    fn is_proxy(&self, url: &Url) -> bool {
        url.host_str()
            .zip(url.port())
            .map(|(h, p)| format!("{h}:{p}"))
            == Some(self.proxy.clone())
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        if !self.is_proxy(url) {
            return None;
        }
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|(_, (_, path))| url.path().starts_with(path.as_str()))
            .map(|(name, (value, _))| format!("{name}={value}"))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn keep_cookies(&mut self, url: &Url, headers: &HeaderMap) {
        if !self.is_proxy(url) {
            return;
        }
        for value in headers.get_all(SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';').map(str::trim);
            let Some((name, val)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let mut path = "/".to_owned();
            let mut delete = false;
            for attr in parts {
                let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
                match k.to_ascii_lowercase().as_str() {
                    "path" => path = v.to_owned(),
                    "max-age" => delete = v.trim() == "0",
                    _ => {}
                }
            }
            if delete {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), (val.to_owned(), path));
            }
        }
    }

    /// The value of the proxy's cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.get(name).map(|(v, _)| v.clone())
    }

    /// One request, no redirect following; keeps cookies.
    pub async fn fetch(&mut self, url: &Url) -> (Hop, Reply) {
        let cookie = self.cookie_header(url);
        let mut headers: Vec<(&str, &str)> =
            vec![("accept", "text/html"), ("sec-fetch-site", self.fetch_site)];
        if let Some(c) = cookie.as_deref() {
            headers.push((COOKIE.as_str(), c));
        }
        let reply = get(&self.client, url.as_str(), &headers).await;
        self.keep_cookies(url, &reply.headers);
        let location = reply.header(LOCATION.as_str()).map(|l| {
            url.join(l)
                .unwrap_or_else(|e| panic!("bad Location {l:?} from {url}: {e}"))
        });
        let hop = Hop {
            url: url.clone(),
            status: reply.status,
            location,
        };
        (hop, reply)
    }

    /// Opens `url` and follows redirects (at most 10) to the final page.
    pub async fn open(&mut self, url: &str) -> Page {
        let mut url = Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let mut hops = Vec::new();
        self.fetch_site = "none";
        for _ in 0..=10 {
            let (hop, reply) = self.fetch(&url).await;
            let next = hop
                .location
                .clone()
                .filter(|_| reply.status.is_redirection());
            hops.push(hop);
            match next {
                Some(next) => {
                    if !self.is_proxy(&next) {
                        self.fetch_site = "cross-site";
                    }
                    url = next;
                }
                None => {
                    return Page {
                        status: reply.status,
                        url,
                        body: reply.text(),
                        hops,
                    };
                }
            }
        }
        panic!("more than 10 redirects: {hops:#?}");
    }
}
