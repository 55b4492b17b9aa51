//! Quota efficiency: how many requests reach the platform, and how many of
//! them carry a whole body, per request the callers make, with the
//! conditional cache and GET sharing on and off.
//!
//! Several simulated tools share one installation and run at once, each a
//! mix of GETs: most for a small set of popular documents (the same issue,
//! the same file, polled), the rest distinct. The fake platform answers
//! with validators and 304s, and takes a few milliseconds, so identical
//! GETs overlap as they do under CI load.
//!
//! `cargo bench --bench quota_efficiency` runs it in full; under `cargo
//! test --all-targets` it runs a few requests only, to prove it still works.

use atomgit_fake::{self as fake, FakeAtomGit, FakeInstallation, FakeOptions, FakeRateLimit};
use atomgit_proxy::config::Config;
use atomgit_proxy::{app, server};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Mix {
    tools: usize,
    per_tool: usize,
    /// Popular documents; a request picks one of them with probability `repeat`.
    popular: usize,
    repeat: f64,
}

/// What one run saw.
struct Seen {
    caller_requests: usize,
    upstream_requests: usize,
    /// Answers the proxy built from a 304 (no body crossed the wire).
    revalidated: usize,
    shared: usize,
}

/// A deterministic stream of numbers in [0, 1), so both runs send the same mix.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn run(public_pem: &str, private_pem: &str, mix: &Mix, cache: &str) -> Seen {
    let fake = FakeAtomGit::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeOptions {
            app_public_key_pem: public_pem.to_owned(),
            installations: vec![FakeInstallation {
                id: 14,
                account: "yanqianyu".into(),
            }],
            rate_limit: FakeRateLimit {
                limit: 1_000_000,
                ..Default::default()
            },
            ..FakeOptions::default()
        },
    )
    .await
    .unwrap();
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nupstream: {}\napp:\n  id: 75\n  private_key: {{ value: {} }}\nquota: {{ per_second: 0 }}\n{cache}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    installation: {{ id: 14 }}\n",
        fake.url(),
        serde_json::to_string(private_pem).unwrap()
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("."), "bench").unwrap();
    let listeners = server::bind(&config.listen, config.unix_socket_mode).unwrap();
    let running = app::start(config, listeners).unwrap();
    let proxy = format!("http://{}", running.addrs[0]);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let mut tasks = Vec::new();
    for tool in 0..mix.tools {
        let (client, proxy) = (client.clone(), proxy.clone());
        let mut rng = Lcg(tool as u64 + 1);
        let (per_tool, popular, repeat) = (mix.per_tool, mix.popular, mix.repeat);
        tasks.push(tokio::spawn(async move {
            let (mut revalidated, mut shared) = (0, 0);
            for i in 0..per_tool {
                let name = if rng.next() < repeat {
                    format!("hot{}", (rng.next() * popular as f64) as usize)
                } else {
                    format!("t{tool}-{i}")
                };
                let url = format!("{proxy}/orgs/yanqianyu/etag/{name}?slow_ms=5");
                let req = http::Request::get(url).body(Empty::new()).unwrap();
                let resp = client.request(req).await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                match resp
                    .headers()
                    .get("x-atomgit-proxy-cache")
                    .map(|v| v.as_bytes())
                {
                    Some(b"revalidated") => revalidated += 1,
                    Some(b"shared") => shared += 1,
                    _ => {}
                }
                resp.into_body().collect().await.unwrap();
            }
            (revalidated, shared)
        }));
    }
    let (mut revalidated, mut shared) = (0, 0);
    for t in tasks {
        let (r, s) = t.await.unwrap();
        revalidated += r;
        shared += s;
    }
    let upstream_requests = fake
        .api_requests()
        .iter()
        .filter(|r| r.path.contains("/etag/"))
        .count();
    running.shutdown().await;
    fake.shutdown();
    Seen {
        caller_requests: mix.tools * mix.per_tool,
        upstream_requests,
        revalidated,
        shared,
    }
}

fn report(name: &str, s: &Seen) {
    let calls = s.caller_requests as f64;
    println!(
        "{name}: {} caller requests -> {} upstream requests ({:.2} per caller request), {} whole bodies from the platform ({:.2} per caller request); {} revalidated from 304, {} shared",
        s.caller_requests,
        s.upstream_requests,
        s.upstream_requests as f64 / calls,
        s.upstream_requests - s.revalidated,
        (s.upstream_requests - s.revalidated) as f64 / calls,
        s.revalidated,
        s.shared,
    );
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mix = if full {
        Mix {
            tools: 8,
            per_tool: 100,
            popular: 5,
            repeat: 0.7,
        }
    } else {
        Mix {
            tools: 2,
            per_tool: 5,
            popular: 2,
            repeat: 0.7,
        }
    };
    let (private_pem, public_pem) = fake::generate_app_key();
    println!(
        "quota efficiency: {} tools x {} GETs, {:.0}% for {} popular documents",
        mix.tools,
        mix.per_tool,
        mix.repeat * 100.0,
        mix.popular
    );
    let on = run(&public_pem, &private_pem, &mix, "").await;
    report("cache and sharing on ", &on);
    let off = run(&public_pem, &private_pem, &mix, "cache: { max_bytes: 0 }").await;
    report("cache and sharing off", &off);
    assert_eq!(off.upstream_requests, off.caller_requests);
    assert!(on.upstream_requests <= off.upstream_requests);
}
