//! Bodies stream through the proxy in both directions: a 100 MiB upload
//! generated chunk by chunk and a 100 MiB download hashed as it arrives, over
//! HTTP/1.1, and an upload over inbound HTTP/2 (prior knowledge).

mod common;

use bytes::Bytes;
use common::{TestEnv, bounded};
use futures_util::stream;
use http::{Method, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::OnceLock;

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

const ROUTES: &str = r#"
- name: files
  match: { path_prefix: /upload }
  installation: { id: 14 }
- name: downloads
  match: { path_prefix: /download }
  installation: { id: 14 }
"#;

/// A buffer every upload chunk is a zero-copy slice of.
fn upload_pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..CHUNK + 256)
            .map(|j| (j.wrapping_mul(31) ^ (j >> 8)) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// Upload chunk `i`: each one starts at a different offset, so reordered or
/// dropped chunks change the hash.
fn upload_chunk(i: u64) -> Bytes {
    let start = (i.wrapping_mul(13) % 256) as usize;
    upload_pattern().slice(start..start + CHUNK)
}

/// A body of `chunks` generated chunks; nothing is held beyond one chunk.
fn upload_body(chunks: u64) -> common::ReqBody {
    let frames =
        stream::iter((0..chunks).map(|i| Ok::<_, Infallible>(Frame::data(upload_chunk(i)))));
    StreamBody::new(frames).boxed()
}

fn upload_sha(chunks: u64) -> String {
    let mut hasher = Sha256::new();
    for i in 0..chunks {
        hasher.update(upload_chunk(i));
    }
    hex::encode(hasher.finalize())
}

/// The fake's download is byte `i` = `i % 251`.
fn download_sha(n: u64) -> String {
    let period: Vec<u8> = (0..251u32).map(|b| b as u8).collect();
    let mut hasher = Sha256::new();
    let mut left = n;
    while left > 0 {
        let take = left.min(period.len() as u64) as usize;
        hasher.update(&period[..take]);
        left -= take as u64;
    }
    hex::encode(hasher.finalize())
}

async fn upload(
    client: &common::HttpClient,
    env: &TestEnv,
    chunks: u64,
) -> (Version, serde_json::Value) {
    let req = common::request(Method::POST, &env.url("/upload"), &[], upload_body(chunks));
    let resp = client.request(req).await.expect("the proxy answers");
    let version = resp.version();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the answer can be read")
        .to_bytes();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let json = serde_json::from_slice(&body).expect("JSON from /upload");
    (version, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_through() {
    bounded(240, "100 MiB upload", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        let chunks = 100 * MIB / CHUNK as u64;
        let expected = upload_sha(chunks);

        let (_, json) = upload(&env.client, &env, chunks).await;
        assert_eq!(json["bytes"], 100 * MIB);
        assert_eq!(json["sha256"], expected.as_str());
        common::single_bearer(&env.last_api_request("/upload").headers);
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_download_streams_back() {
    bounded(240, "100 MiB download", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        let n = 100 * MIB;
        let expected = download_sha(n);

        let req = common::request(
            Method::GET,
            &env.url(&format!("/download/{n}")),
            &[],
            common::full(""),
        );
        let resp = env.client.request(req).await.expect("the proxy answers");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
        let mut body = resp.into_body();
        let mut hasher = Sha256::new();
        let (mut received, mut frames) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the download body streams without error");
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                received += data.len() as u64;
                frames += 1;
            }
        }
        assert_eq!(received, n);
        assert!(frames > 1, "the body arrived as one buffer");
        assert_eq!(hex::encode(hasher.finalize()), expected);
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_inbound_http2_streams_through() {
    bounded(120, "HTTP/2 upload", async {
        let env = TestEnv::start(ROUTES, &[(14, "yanqianyu")]).await;
        let chunks = 16 * MIB / CHUNK as u64;
        let h2 = common::h2_client();

        let (version, json) = upload(&h2, &env, chunks).await;
        assert_eq!(version, Version::HTTP_2, "the proxy answered over HTTP/2");
        assert_eq!(json["bytes"], 16 * MIB);
        assert_eq!(json["sha256"], upload_sha(chunks).as_str());
        let seen = env.last_api_request("/upload");
        common::single_bearer(&seen.headers);
        assert_eq!(seen.headers["host"], env.fake.addr().to_string().as_str());
        drop(h2);
        env.shutdown().await;
    })
    .await
}
