//! The forwarding path's cost, side by side in one run: the same requests
//! sent straight to the fake AtomGit and through the proxy in front of it.
//! Timings on a shared machine are noisy, so what this reports is ratios
//! (proxied / direct), alternating rounds so drift hits both sides alike.
//!
//! `cargo bench --bench forwarding` runs it in full; under `cargo test
//! --all-targets` it runs a few requests only, to prove it still works.

use atomgit_fake::{self as fake, FakeAtomGit, FakeInstallation, FakeOptions};
use atomgit_proxy::config::Config;
use atomgit_proxy::{app, server};
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Sizes {
    rounds: usize,
    requests: usize,
    concurrency: usize,
    download: u64,
}

/// `s.requests` GETs of a small JSON answer, `s.concurrency` at a time.
async fn small_requests(
    client: &HttpClient,
    base: &str,
    auth: Option<&HeaderValue>,
    s: &Sizes,
) -> Duration {
    let started = Instant::now();
    let per_task = s.requests / s.concurrency;
    let mut tasks = Vec::new();
    for _ in 0..s.concurrency {
        let (client, auth, url) = (
            client.clone(),
            auth.cloned(),
            format!("{base}/orgs/yanqianyu/repos"),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let resp = client.request(get(&url, auth.as_ref())).await.unwrap();
                assert!(resp.status().is_success());
                resp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// One streamed download of `size` bytes, counted as it arrives.
async fn download(
    client: &HttpClient,
    base: &str,
    auth: Option<&HeaderValue>,
    size: u64,
) -> Duration {
    let started = Instant::now();
    let resp = client
        .request(get(&format!("{base}/download/{size}"), auth))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, size);
    started.elapsed()
}

fn get(url: &str, auth: Option<&HeaderValue>) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::get(url).body(Empty::new()).unwrap();
    if let Some(auth) = auth {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth.clone());
    }
    req
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let s = if full {
        Sizes {
            rounds: 5,
            requests: 4000,
            concurrency: 16,
            download: 512 << 20,
        }
    } else {
        Sizes {
            rounds: 1,
            requests: 32,
            concurrency: 4,
            download: 1 << 20,
        }
    };
    let (private_pem, public_pem) = fake::generate_app_key();
    let fake = FakeAtomGit::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeOptions {
            app_public_key_pem: public_pem,
            installations: vec![FakeInstallation {
                id: 14,
                account: "yanqianyu".into(),
            }],
            // A budget the bench cannot spend, and smoothing off below:
            // this measures the forwarding path, not the quota.
            rate_limit: fake::FakeRateLimit {
                limit: u64::MAX / 2,
                ..Default::default()
            },
            ..FakeOptions::default()
        },
    )
    .await
    .unwrap();
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nupstream: {}\napp:\n  id: 75\n  private_key: {{ value: {} }}\nquota: {{ per_second: 0 }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    installation: {{ id: 14 }}\n",
        fake.url(),
        serde_json::to_string(&private_pem).unwrap()
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("."), "bench").unwrap();
    let listeners = server::bind(&config.listen, config.unix_socket_mode).unwrap();
    let running = app::start(config, listeners).unwrap();
    let proxy = format!("http://{}", running.addrs[0]);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    // The direct side sends the same token the proxy injects (the fake
    // accepts only tokens it issued), taken from the proxy's own cache.
    let token = {
        let snap = running.shared().snapshot.load_full();
        let route = snap.config.routes.iter().next().unwrap().credential.clone();
        running
            .shared()
            .credentials
            .token(&snap.context(), &route, "/")
            .await
            .unwrap()
    };
    let direct_auth = Some(token.header());

    let (mut small_ratio, mut dl_ratio) = (Vec::new(), Vec::new());
    for round in 0..s.rounds {
        let d = small_requests(&client, &fake.url(), direct_auth, &s).await;
        let p = small_requests(&client, &proxy, None, &s).await;
        let dd = download(&client, &fake.url(), direct_auth, s.download).await;
        let pd = download(&client, &proxy, None, s.download).await;
        small_ratio.push(p.as_secs_f64() / d.as_secs_f64());
        dl_ratio.push(pd.as_secs_f64() / dd.as_secs_f64());
        println!(
            "round {round}: {} small requests x{}: direct {:?}, proxied {:?}; {} MiB download: direct {:?}, proxied {:?}",
            s.requests,
            s.concurrency,
            d,
            p,
            s.download >> 20,
            dd,
            pd
        );
    }
    small_ratio.sort_by(f64::total_cmp);
    dl_ratio.sort_by(f64::total_cmp);
    println!(
        "median time ratio proxied/direct: small requests {:.2}, download {:.2}",
        small_ratio[small_ratio.len() / 2],
        dl_ratio[dl_ratio.len() / 2]
    );
    running.shutdown().await;
    fake.shutdown();
}
