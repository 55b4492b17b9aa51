//! The proxy's own work on one request, without the network: what a
//! regression in the hot path shows up in first. Each step the service takes
//! between reading a request head and handing it to the upstream pool is
//! measured on its own, plus all of them in a row:
//! - the browser guard (`Origin`, `Sec-Fetch-Site`, `Host`) and the path check,
//! - route selection over a table shaped like a real config,
//! - the token lookup on a warm cache (the hit path must not allocate or lock
//!   for writing),
//! - header surgery and the upstream URI.
//!
//! `cargo bench --bench request_path` runs it with criterion's statistics
//! (and compares against the last run); under `cargo test --all-targets`
//! every function runs once, to prove it still works.

use atomgit_fake::{FakeAtomGit, FakeInstallation, FakeOptions};
use atomgit_proxy::config::Config;
use atomgit_proxy::credentials::Token;
use atomgit_proxy::proxy::{guard, headers};
use atomgit_proxy::routes::path;
use atomgit_proxy::state::{Shared, Snapshot};
use atomgit_proxy::wire::head;
use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Uri};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

const ROUTES: &str = r#"
  - name: alice
    match: { path_prefix: /as/alice }
    strip_prefix: true
    installation: { id: 14 }
  - name: docs
    match: { path_prefix: /repos/yanqianyu/docs, methods: [GET, HEAD] }
    installation: { id: 14 }
  - name: hanshu
    match: { path_prefix: /as/hanshu, host: tools.local }
    strip_prefix: true
    installation: { id: 14 }
  - name: repos
    match: { path_prefix: /repos }
    installation: { id: 14 }
  - name: orgs
    match: { path_prefix: /orgs }
    installation: { id: 14 }
"#;

/// What a typical tool sends: curl's headers plus a keep-alive.
fn inbound_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

/// A proxy snapshot whose cache holds a token for installation 14, minted
/// from an in-process fake (the fake stops once the token is cached).
fn warm_proxy() -> (tokio::runtime::Runtime, Arc<Shared>, FakeAtomGit) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (private_pem, public_pem) = atomgit_fake::generate_app_key();
    let (shared, fake) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake");
        let fake = FakeAtomGit::start(
            listener,
            FakeOptions {
                app_id: 75,
                app_public_key_pem: public_pem,
                installations: vec![FakeInstallation {
                    id: 14,
                    account: "yanqianyu".into(),
                }],
                ..FakeOptions::default()
            },
        )
        .await
        .expect("start the fake");
        let key = serde_json::to_string(&private_pem).expect("a string");
        let yaml = format!(
            "upstream: {}\napp:\n  id: 75\n  private_key: {{ value: {key} }}\nroutes:{ROUTES}",
            fake.url()
        );
        let config = Config::from_yaml(&yaml, Path::new("."), "bench").expect("a valid config");
        let shared = Shared::new(Snapshot::build(config, None).expect("a snapshot"));
        let snap = shared.snapshot.load_full();
        let route = snap.config.routes.get("orgs").expect("the orgs route");
        shared
            .credentials
            .token(&snap.context(), &route.credential, "/orgs/yanqianyu/repos")
            .await
            .expect("a first token");
        (shared, fake)
    });
    (rt, shared, fake)
}

fn request_path(c: &mut Criterion) {
    let (_rt, shared, _fake) = warm_proxy();
    let snap = shared.snapshot.load_full();
    let inbound = inbound_headers();
    let uri: Uri = "/orgs/yanqianyu/repos?per_page=100".parse().expect("a URI");
    let host = Some("127.0.0.1:8080");

    c.bench_function("guard_and_path_check", |b| {
        b.iter(|| {
            guard::check(
                &Method::GET,
                black_box(uri.path()),
                &inbound,
                host,
                &snap.config.browser,
            )
            .and_then(|()| guard::method_overrides(&inbound))
            .expect("a clean request");
            path::checked_reading(black_box(uri.path())).expect("a clean path");
        })
    });

    c.bench_function("route_selection", |b| {
        b.iter(|| {
            snap.config
                .routes
                .select(&Method::GET, &[], black_box(uri.path()), host, None)
                .expect("a route")
        })
    });

    let route = snap.config.routes.get("orgs").expect("the orgs route");
    c.bench_function("token_lookup_warm", |b| {
        b.iter(|| {
            shared
                .credentials
                .token(&snap.context(), &route.credential, black_box(uri.path()))
                .now_or_never()
                .expect("a cached token answers without waiting")
                .expect("a token")
        })
    });

    let token = shared
        .credentials
        .token(&snap.context(), &route.credential, uri.path())
        .now_or_never()
        .expect("cached")
        .expect("a token");
    c.bench_function("header_surgery_and_uri", |b| {
        b.iter(|| black_box(upstream_head(&inbound, &token, &snap, &uri, uri.path())))
    });

    c.bench_function("whole_request_path", |b| {
        b.iter(|| {
            let path = black_box(uri.path());
            guard::check(&Method::GET, path, &inbound, host, &snap.config.browser)
                .expect("a clean request");
            let overrides = guard::method_overrides(&inbound).expect("no override");
            // As the proxy does: the path checked and read in one pass.
            let decoded = path::checked_reading(path).expect("a clean path");
            let route = snap
                .config
                .routes
                .select_read(
                    &Method::GET,
                    &overrides,
                    path,
                    decoded.as_deref(),
                    host,
                    None,
                )
                .expect("a route");
            let forward_path = route.forward_path(path);
            let token = shared
                .credentials
                .token(&snap.context(), &route.credential, forward_path)
                .now_or_never()
                .expect("cached")
                .expect("a token");
            black_box(upstream_head(&inbound, &token, &snap, &uri, forward_path))
        })
    });
}

/// What `forward::send` and the upstream's fast path do to the head: header
/// surgery, the upstream URI, and the head written out with the injected
/// token and `Host`.
fn upstream_head(
    inbound: &HeaderMap,
    token: &Token,
    snap: &Snapshot,
    uri: &Uri,
    forward_path: &str,
) -> BytesMut {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.headers = inbound.clone();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_caller_credentials(&mut parts.headers);
    parts.uri = snap
        .upstream
        .forward_uri(uri, forward_path)
        .expect("an upstream URI");
    let mut out = BytesMut::with_capacity(512);
    head::put_request(
        &mut out,
        &parts,
        &snap.upstream.host_header,
        token.header(),
        None,
    );
    out
}

criterion_group!(benches, request_path);
criterion_main!(benches);
