//! `store.redis.url` with `rediss://` (issue 9): a TLS-only `redis-server`
//! with a password, a test CA named by `SSL_CERT_FILE` (the `redis` crate
//! verifies against the system roots, which honour it), and the real binary.
//! With the right CA the store is `ok` and a minted installation token lands
//! in Redis; with a wrong one the store is `unavailable` while installation
//! routes still serve; the password is in no log line either way.

mod common;

use common::fleet::{ENCRYPTION_KEY, start_fleet_fake};
use common::process::{exit_and_stderr, serve_logged_with_env, signal, try_get, wait_healthy};
use common::redis::{RedisServer, Tls};
use common::users::{fake_oauth, oauth_config_yaml};
use common::{app_key, bounded, dead_port};
use http::StatusCode;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
const PASSWORD: &str = "tls-only-redis-pw-5e8c1a";
const PREFIX: &str = "atomgit-proxy:";

/// A CA's PEM and signer.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A TLS-only Redis with [`PASSWORD`], its certificate for localhost and
/// 127.0.0.1 signed by a fresh CA; returns the server and the CA's PEM.
async fn start_tls_redis() -> (RedisServer, String) {
    let (ca_pem, issuer) = new_ca("atomgit-proxy test Redis CA");
    let key = KeyPair::generate().expect("a server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("a server cert");
    let redis = RedisServer::start_tls(Tls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_pem.clone(),
        password: PASSWORD.to_owned(),
    })
    .await;
    (redis, ca_pem)
}

/// Writes a config whose store URL comes from `ATOMGIT_PROXY_REDIS_URL`,
/// and `ca_pem` as `ca.pem`; returns the config and the proxy's address.
fn write_config(dir: &Path, fake: &atomgit_fake::FakeAtomGit, ca_pem: &str) -> (String, String) {
    std::fs::write(dir.join("app.pem"), &app_key().0).expect("write app.pem");
    std::fs::write(dir.join("store.key"), ENCRYPTION_KEY).expect("write store.key");
    std::fs::write(dir.join("ca.pem"), ca_pem).expect("write ca.pem");
    let addr: SocketAddr = format!("127.0.0.1:{}", dead_port())
        .parse()
        .expect("an address");
    let yaml = oauth_config_yaml(
        addr,
        addr,
        fake,
        &format!(
            r#"
            redis:
              url: {{ env: ATOMGIT_PROXY_REDIS_URL }}
              key_prefix: "{PREFIX}"
            encryption_key: {{ file: store.key }}
            "#
        ),
        "",
        "
        - name: yanqianyu
          match: { path_prefix: /orgs/yanqianyu }
          installation: { id: 14 }
        ",
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("write the config");
    (config.display().to_string(), addr.to_string())
}

/// Polls readyz (bounded) until the store's state is `want`.
async fn wait_store_state(addr: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = try_get(addr, "/_proxy/readyz")
            .await
            .expect("readyz answers");
        assert_eq!(ready.status, StatusCode::OK, "plain readyz stays ready");
        let json = ready.json();
        assert_eq!(json["store"]["backend"], "redis", "{json}");
        if json["store"]["state"] == want {
            return json;
        }
        assert!(Instant::now() < deadline, "store never {want}: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rediss_with_a_password_verifies_the_server_against_ssl_cert_file() {
    bounded(90, "rediss store", async {
        let (redis, ca_pem) = start_tls_redis().await;
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (config, addr) = write_config(dir.path(), &fake, &ca_pem);
        let ca_file = dir.path().join("ca.pem").display().to_string();
        let url = redis.url();
        assert!(url.starts_with("rediss://:"), "{url}");
        let child = serve_logged_with_env(
            Path::new(&config),
            &[
                ("ATOMGIT_PROXY_REDIS_URL", &url),
                ("SSL_CERT_FILE", &ca_file),
            ],
        );
        wait_healthy(&addr).await;

        let reply = try_get(&addr, "/orgs/yanqianyu").await.expect("an answer");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        wait_store_state(&addr, "ok").await;
        // The minted token was written to Redis over TLS (sealed, so only
        // its key says what it is).
        let keys: Vec<String> = redis.dump().await.into_iter().map(|(k, _)| k).collect();
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{PREFIX}{{inst:")) && k.ends_with(":token")),
            "{keys:?}"
        );
        assert_eq!(fake.mints_for(14), 1);

        signal(&child, "TERM");
        let (status, log) = exit_and_stderr(child).await;
        assert!(status.success(), "{log}");
        assert!(!log.contains(PASSWORD), "the password leaked: {log}");
    })
    .await;
}

#[tokio::test]
async fn rediss_with_a_wrong_ca_leaves_the_store_unavailable_and_installations_serving() {
    bounded(90, "rediss wrong CA", async {
        let (redis, _right_ca) = start_tls_redis().await;
        let (wrong_ca, _) = new_ca("some other CA");
        let fake = start_fleet_fake(fake_oauth(HOUR), HOUR).await;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (config, addr) = write_config(dir.path(), &fake, &wrong_ca);
        let ca_file = dir.path().join("ca.pem").display().to_string();
        let child = serve_logged_with_env(
            Path::new(&config),
            &[
                ("ATOMGIT_PROXY_REDIS_URL", &redis.url()),
                ("SSL_CERT_FILE", &ca_file),
            ],
        );
        wait_healthy(&addr).await;

        for _ in 0..2 {
            let reply = try_get(&addr, "/orgs/yanqianyu").await.expect("an answer");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        let ready = wait_store_state(&addr, "unavailable").await;
        assert!(!ready.to_string().contains(PASSWORD), "{ready}");
        // Nothing reached Redis: the handshake failed before any command.
        assert!(redis.dump().await.is_empty());

        signal(&child, "TERM");
        let (status, log) = exit_and_stderr(child).await;
        assert!(status.success(), "{log}");
        assert!(!log.contains(PASSWORD), "the password leaked: {log}");
    })
    .await;
}
