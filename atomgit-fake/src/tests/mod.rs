//! Tests of the fake against a real hyper client on 127.0.0.1.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

mod oauth_endpoints;

/// One key pair per test process: 2048-bit generation is the slow part.
fn keys() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(generate_app_key)
}

fn jwt(iss: Value, iat_offset: i64, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "iss": iss, "iat": now + iat_offset, "exp": now + exp_offset });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(keys().0.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

fn good_jwt() -> String {
    jwt(json!("75"), -60, 540)
}

fn options() -> FakeOptions {
    FakeOptions {
        app_public_key_pem: keys().1.clone(),
        installations: vec![
            FakeInstallation {
                id: 14,
                account: "yanqianyu".into(),
            },
            FakeInstallation {
                id: 18,
                account: "hanshuorg2".into(),
            },
        ],
        ..FakeOptions::default()
    }
}

async fn start(opts: FakeOptions) -> FakeAtomGit {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    FakeAtomGit::start(listener, opts).await.unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: http::header::HeaderName) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    send_with(false, method, url, headers, body).await
}

async fn send_with(
    h2: bool,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(Method::GET, url, &[("authorization", &auth)], Bytes::new()).await
}

async fn mint(fake: &FakeAtomGit, id: u64) -> Reply {
    let url = format!("{}/app/installations/{id}/access_tokens", fake.url());
    let auth = format!("Bearer {}", good_jwt());
    send(
        Method::POST,
        &url,
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn installations_need_a_valid_app_jwt() {
    let fake = start(options()).await;
    let url = format!("{}/app/installations", fake.url());

    let ok = get(&url, &good_jwt()).await;
    assert_eq!(ok.status, StatusCode::OK);
    let list = ok.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], 14);
    assert_eq!(list[0]["account"]["path"], "yanqianyu");
    assert_eq!(list[0]["events"][0], "{\"code\":\"push\"");
    assert_eq!(
        list[1]["access_tokens_url"],
        format!("{}/app/installations/18/access_tokens", fake.url())
    );
    assert_eq!(
        get(&url, &jwt(json!(75), -60, 540)).await.status,
        StatusCode::OK
    );

    // Change a character well inside the signature: the last base64 character
    // carries padding bits, so changing it may decode to the same bytes.
    let mut tampered = good_jwt().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        jwt(json!("76"), -60, 540),
        jwt(json!("75"), -60, 3600),
        jwt(json!("75"), -600, -10),
        tampered,
        "not-a-jwt".to_owned(),
    ] {
        let reply = get(&url, &bad).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.json()["message"].is_string());
    }
    let none = send(Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.installation_list_count(), 8);

    // A PKCS#1 public key verifies the same JWTs.
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::RsaPublicKey::from_public_key_pem(&keys().1).unwrap();
    let pkcs1 = public.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let fake1 = start(FakeOptions {
        app_public_key_pem: pkcs1,
        ..options()
    })
    .await;
    let url1 = format!("{}/app/installations", fake1.url());
    assert_eq!(get(&url1, &good_jwt()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn minted_token_reaches_its_own_org_with_pagination() {
    let fake = start(options()).await;
    let reply = mint(&fake, 14).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ats_") && token.len() == 36);
    let expires_at = body["expires_at"].as_str().unwrap();
    assert!(expires_at.ends_with("+08:00"), "{expires_at}");
    assert_eq!(expires_at.len(), "2023-05-07T04:02:40.758+08:00".len());
    let at = chrono::DateTime::parse_from_rfc3339(expires_at).unwrap();
    let ahead = at.timestamp() - chrono::Utc::now().timestamp();
    assert!((3590..=3600).contains(&ahead), "{ahead}");
    assert_eq!(fake.token_owner(&token), Some(TokenOwner::Installation(14)));
    assert_eq!((fake.mint_count(), fake.mints_for(14)), (1, 1));
    assert_eq!(mint(&fake, 99).await.status, StatusCode::NOT_FOUND);

    // Case-insensitive owner match, GitHub-style absolute Link header.
    let base = fake.url();
    let page1 = get(&format!("{base}/orgs/YanQianYu/repos"), &token).await;
    assert_eq!(page1.status, StatusCode::OK);
    assert_eq!(page1.json()[0]["full_name"], "YanQianYu/repo-1");
    assert_eq!(
        page1.header(LINK),
        format!(
            "<{base}/orgs/YanQianYu/repos?page=2&per_page=2>; rel=\"next\", \
             <{base}/orgs/YanQianYu/repos?page=3&per_page=2>; rel=\"last\""
        )
    );
    let page3 = get(&format!("{base}/orgs/yanqianyu/repos?page=3"), &token).await;
    assert_eq!(page3.json().as_array().unwrap().len(), 1);
    assert!(
        page3
            .header(LINK)
            .contains("page=2&per_page=2>; rel=\"prev\"")
    );
    assert!(
        page3
            .header(LINK)
            .contains("page=1&per_page=2>; rel=\"first\"")
    );

    let other = get(&format!("{base}/orgs/hanshuorg2/repos"), &token).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&format!("{base}/user"), &token).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&format!("{base}/x"), "ats_nope").await.status,
        StatusCode::UNAUTHORIZED
    );
    let auth = format!("Bearer {token}");
    let twice = send(
        Method::GET,
        &format!("{base}/x"),
        &[("authorization", &auth), ("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);

    let echo = get(&format!("{base}/some/thing?a=1"), &token).await.json();
    assert_eq!(echo["owner"], "installation:14");
    assert_eq!(echo["query"], "a=1");
    let moved = get(&format!("{base}/redirect/anywhere"), &token).await;
    assert_eq!(moved.status, StatusCode::FOUND);
    assert_eq!(
        moved.header(LOCATION),
        format!("{base}/orgs/yanqianyu/repos")
    );

    fake.set_token_endpoint_failure(Some(503));
    assert_eq!(
        mint(&fake, 14).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    fake.set_token_endpoint_failure(None);
    assert_eq!(mint(&fake, 14).await.status, StatusCode::OK);
    assert_eq!(fake.mint_count(), 2);
    assert!(
        fake.api_requests()
            .iter()
            .all(|r| !r.path.starts_with("/app/"))
    );
    assert_eq!(fake.requests().len(), fake.api_requests().len() + 4);
}

#[tokio::test]
async fn expired_tokens_are_refused_and_counted() {
    let fake = start(options()).await;
    let url = format!("{}/orgs/yanqianyu/repos", fake.url());
    fake.set_token_lifetime(Duration::from_millis(300));
    let token = mint(&fake, 14).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&url, &token).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = get(&url, &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["message"], "token expired");
    assert_eq!(fake.expired_tokens_seen(), 1);

    fake.set_token_lifetime(Duration::ZERO);
    let dead = mint(&fake, 14).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&url, &dead).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.expired_tokens_seen(), 2);
}

#[tokio::test]
async fn streams_uploads_and_downloads_over_http1_and_http2() {
    let fake = start(options()).await;
    let token = mint(&fake, 14).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {token}");

    let n = 1024 * 1024 + 7;
    let down = get(&format!("{}/download/{n}", fake.url()), &token).await;
    assert_eq!(down.header(CONTENT_LENGTH), n.to_string());
    assert_eq!(down.body.len(), n);
    assert!(
        down.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );

    let data = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 1]);
    let up = send_with(
        true,
        Method::POST,
        &format!("{}/upload", fake.url()),
        &[("authorization", &auth)],
        data.clone(),
    )
    .await
    .json();
    assert_eq!(up["bytes"], data.len());
    assert_eq!(up["sha256"], hex::encode(Sha256::digest(&data)));
    let last = fake.api_requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.version),
        ("/upload", Version::HTTP_2)
    );

    let slow = get(&format!("{}/slow/50", fake.url()), &token).await;
    assert_eq!(slow.json()["slept"], 50);
}
