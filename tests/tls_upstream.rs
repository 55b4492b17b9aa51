//! An `https` upstream, as in production: a TLS front (a test CA's
//! certificate for `localhost`, ALPN `h2` and/or `http/1.1`) relays to the
//! fake AtomGit, and the proxy trusts the CA through `upstream_ca_file`.
//! Through the real binary on two worker threads and in process: the token
//! mint and forwarded requests go over TLS, kept connections are reused
//! (the front counts handshakes), a POST body streams through, and an
//! untrusted certificate fails fast with 502, naming no secret.

mod common;

use common::process::{serve, signal, wait_for_reload, wait_healthy};
use common::*;
use http::{Method, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: upload
  match: { path_prefix: /upload }
  installation: { id: 14 }
";

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// A test certificate authority: its PEM (for `upstream_ca_file`) and signer.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "atomgit-proxy test CA");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A TLS front on 127.0.0.1 relaying every connection to `target` once the
/// handshake is done; counts completed handshakes.
struct Front {
    port: u16,
    handshakes: Arc<AtomicUsize>,
}

impl Front {
    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

async fn start_front(ca: &Ca, target: SocketAddr, alpn: &[&[u8]]) -> Front {
    let key = KeyPair::generate().expect("a server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca.issuer).expect("a server cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("a server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("an address").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Front { port, handshakes }
}

/// Config text for `upstream` trusting the CA in `ca_file` (relative to the config).
fn yaml(listen: &str, upstream: &str, ca_file: &str) -> String {
    config_yaml_with(
        listen,
        upstream,
        "private_key: { file: app.pem }",
        &format!("upstream_ca_file: {ca_file}"),
        ROUTES,
    )
}

/// Proxy URL of `path` on `addr`.
fn at(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Mint, forward, reuse and upload over TLS; `version` is what the fake
/// must see (the ALPN the front offered decides it).
async fn mint_forward_reuse_upload(
    addr: &str,
    fake: &atomgit_fake::FakeAtomGit,
    front: &Front,
    version: http::Version,
) {
    let client = client();
    let reply = get(&client, &at(addr, "/orgs/yanqianyu/over-tls"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(fake.mint_count(), 1, "one token minted over TLS");
    let seen = fake
        .api_requests()
        .into_iter()
        .find(|r| r.path == "/orgs/yanqianyu/over-tls")
        .expect("the forwarded GET reached the fake");
    let token = single_bearer(&seen.headers);
    assert_eq!(
        fake.token_owner(&token),
        Some(atomgit_fake::TokenOwner::Installation(14))
    );
    assert_eq!(seen.version, version, "upstream protocol");

    // Sequential requests on one caller connection stay on one worker,
    // whose kept TLS connection serves them all: no new handshake.
    let warm = front.handshakes();
    assert!(warm >= 1, "the front saw no handshake");
    for i in 0..5 {
        let reply = get(
            &client,
            &at(addr, &format!("/orgs/yanqianyu/again/{i}")),
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(front.handshakes(), warm, "kept connections were not reused");
    assert_eq!(fake.mint_count(), 1, "the token was reused");

    // A body bigger than any buffer on the way, hashed by the fake.
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want = hex::encode(Sha256::digest(&body));
    let req = request(Method::POST, &at(addr, "/upload"), &[], full(body));
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["sha256"], want.as_str(), "{json}");
    assert_eq!(json["bytes"], 3 << 20, "{json}");
}

#[tokio::test]
async fn the_binary_on_two_workers_talks_http1_over_tls_and_refuses_an_untrusted_cert() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let ca = new_ca();
    let front = start_front(&ca, fake.addr(), &[H1]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("app.pem"), private_key_pem()).expect("write key");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write CA");
    let addr = format!("127.0.0.1:{}", dead_port());
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml(&addr, &front.url(), "ca.pem")).expect("write config");
    let child = serve(&config, Some("2"));
    wait_healthy(&addr).await;

    mint_forward_reuse_upload(&addr, &fake, &front, http::Version::HTTP_11).await;

    // Reload to a CA that did not sign the front's certificate: the cached
    // token is still good, so the forward itself fails, quickly.
    std::fs::write(dir.path().join("other-ca.pem"), new_ca().pem).expect("write CA");
    std::fs::write(&config, yaml(&addr, &front.url(), "other-ca.pem")).expect("write config");
    signal(&child, "HUP");
    wait_for_reload(&addr, "ok").await;
    let client = client();
    let reply = bounded(
        15,
        "an answer despite the untrusted certificate",
        get(&client, &at(&addr, "/orgs/yanqianyu/untrusted"), &[]),
    )
    .await;
    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_unreachable");
    assert!(
        !fake
            .api_requests()
            .iter()
            .any(|r| r.path == "/orgs/yanqianyu/untrusted"),
        "a request crossed an untrusted TLS connection"
    );
    fake.shutdown();
}

/// Starts the proxy in process from `yaml` (relative paths under `dir`).
fn start_in_process(yaml: &str, dir: &Path) -> (atomgit_proxy::app::Running, String) {
    let config = atomgit_proxy::config::Config::from_yaml(yaml, dir, "test config")
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{yaml}"));
    let listeners = atomgit_proxy::server::bind(&config.listen, config.unix_socket_mode)
        .expect("bind the proxy");
    let running = atomgit_proxy::app::start(config, listeners).expect("start the proxy");
    let addr = running.addrs[0].clone();
    (running, addr)
}

#[tokio::test]
async fn in_process_the_proxy_speaks_h2_over_tls_when_offered() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let ca = new_ca();
    let front = start_front(&ca, fake.addr(), &[H2, H1]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("app.pem"), private_key_pem()).expect("write key");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write CA");
    let (running, addr) =
        start_in_process(&yaml("127.0.0.1:0", &front.url(), "ca.pem"), dir.path());

    mint_forward_reuse_upload(&addr, &fake, &front, http::Version::HTTP_2).await;

    bounded(35, "proxy shutdown", running.shutdown()).await;
    fake.shutdown();
}

#[tokio::test]
async fn in_process_an_untrusted_cert_fails_the_mint_fast_and_says_no_secret() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let front = start_front(&new_ca(), fake.addr(), &[H2, H1]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("app.pem"), private_key_pem()).expect("write key");
    // Trusted: a different CA (and the web roots, which did not sign it either).
    std::fs::write(dir.path().join("ca.pem"), new_ca().pem).expect("write CA");
    let (running, addr) =
        start_in_process(&yaml("127.0.0.1:0", &front.url(), "ca.pem"), dir.path());

    let reply = bounded(
        15,
        "an answer despite the untrusted certificate",
        get(&client(), &at(&addr, "/orgs/yanqianyu/untrusted"), &[]),
    )
    .await;
    // The first TLS call is the token mint: the contract's code for that.
    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
    assert_eq!(fake.mint_count(), 0);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        front.handshakes(),
        0,
        "a handshake with an untrusted cert completed"
    );

    bounded(35, "proxy shutdown", running.shutdown()).await;
    fake.shutdown();
}
