//! A fleet for the Redis tests: several proxies in this process, each with
//! its own `Shared` (so nothing is shared but Redis), one fake AtomGit, and
//! one `redis-server` (see [`super::redis`]).
//!
//! Every replica has an installation route (`/orgs/yanqianyu`, id 14; and
//! `/orgs/other`, id 15) and alice's user route (`/as/alice`). The OAuth
//! callback of all replicas is replica 1's address ("B"), as a Service in
//! front of a fleet would be one address for all.

use super::{HttpClient, Reply, app_key, client, get};
use atomgit_fake::{FakeAtomGit, FakeInstallation, FakeOAuth, FakeOptions};
use atomgit_proxy::app::{self, Running};
use atomgit_proxy::config::Config;
use atomgit_proxy::server::Listener;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The fake's installations for a fleet.
pub fn fleet_fake_options(oauth: FakeOAuth, token_lifetime: Duration) -> FakeOptions {
    FakeOptions {
        oauth,
        installations: vec![
            FakeInstallation {
                id: 14,
                account: "yanqianyu".into(),
            },
            FakeInstallation {
                id: 15,
                account: "other".into(),
            },
        ],
        token_lifetime,
        ..super::fake_options()
    }
}

/// A fake with alice and installations 14 and 15.
pub async fn start_fleet_fake(oauth: FakeOAuth, token_lifetime: Duration) -> FakeAtomGit {
    super::start_fake_with(fleet_fake_options(oauth, token_lifetime)).await
}

pub struct Replica {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
}

/// `n` proxies sharing the Redis at `redis_url` under `key_prefix`.
pub struct Fleet {
    pub replicas: Vec<Replica>,
    pub client: HttpClient,
    /// Holds configs and keys.
    pub dir: tempfile::TempDir,
}

/// The encryption key every test fleet uses (base64 of 32 bytes).
pub const ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

impl Fleet {
    pub async fn start(n: usize, fake: &FakeAtomGit, redis_url: &str, key_prefix: &str) -> Fleet {
        Fleet::start_with(n, fake, redis_url, key_prefix, "").await
    }

    /// [`Fleet::start`] with extra top-level YAML (e.g. `quota:`).
    pub async fn start_with(
        n: usize,
        fake: &FakeAtomGit,
        redis_url: &str,
        key_prefix: &str,
        extra: &str,
    ) -> Fleet {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("app.pem"), &app_key().0).expect("write app.pem");
        std::fs::write(dir.path().join("store.key"), ENCRYPTION_KEY).expect("write store.key");
        let mut listeners = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a replica");
            listeners.push(l);
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("an address"))
            .collect();
        let callback = addrs[1.min(n - 1)];
        let mut replicas = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let config_path = dir.path().join(format!("replica{i}.yaml"));
            let yaml = fleet_config(addrs[i], callback, fake, redis_url, key_prefix, extra);
            std::fs::write(&config_path, yaml).expect("write a config");
            let config = Config::load(&config_path)
                .unwrap_or_else(|e| panic!("the fleet config is invalid: {e}"));
            let running =
                app::start(config, vec![Listener::Tcp(listener)]).expect("start a replica");
            replicas.push(Replica {
                running: Some(running),
                addr: addrs[i],
                config_path,
            });
        }
        Fleet {
            replicas,
            client: client(),
            dir,
        }
    }

    pub fn url(&self, replica: usize, path: &str) -> String {
        format!("http://{}{path}", self.replicas[replica].addr)
    }

    pub async fn get(&self, replica: usize, path: &str) -> Reply {
        get(&self.client, &self.url(replica, path), &[]).await
    }

    /// The config file of `replica` (for the CLI).
    pub fn config(&self, replica: usize) -> &PathBuf {
        &self.replicas[replica].config_path
    }

    /// Writes the config of one more replica on `addr` (run by the test,
    /// e.g. as a process), with the same callback, Redis and prefix.
    pub fn extra_config(
        &self,
        addr: SocketAddr,
        fake: &FakeAtomGit,
        redis_url: &str,
        key_prefix: &str,
    ) -> PathBuf {
        let callback = self.replicas[1.min(self.replicas.len() - 1)].addr;
        let path = self.dir.path().join(format!("extra-{}.yaml", addr.port()));
        let yaml = fleet_config(addr, callback, fake, redis_url, key_prefix, "");
        std::fs::write(&path, yaml).expect("write a config");
        path
    }

    /// A login link as `atomgit-proxy login` prints it for this fleet.
    pub fn login_link(&self, user: &str) -> String {
        let config = Config::load(self.config(0)).expect("the fleet config loads");
        let key = atomgit_proxy::store::link_key_for(&config).expect("a link key");
        let oauth = config.oauth.expect("oauth is configured");
        atomgit_proxy::credentials::login_link::link_with_key(&oauth.redirect_uri, &key, user, None)
    }

    pub async fn shutdown(mut self) {
        self.client = client();
        for r in &mut self.replicas {
            if let Some(running) = r.running.take() {
                super::bounded(35, "replica shutdown", running.shutdown()).await;
            }
        }
    }
}

fn fleet_config(
    addr: SocketAddr,
    callback: SocketAddr,
    fake: &FakeAtomGit,
    redis_url: &str,
    key_prefix: &str,
    extra: &str,
) -> String {
    super::users::oauth_config_yaml(
        addr,
        callback,
        fake,
        &format!(
            r#"
            redis:
              url: {{ value: "{redis_url}" }}
              key_prefix: "{key_prefix}"
            encryption_key: {{ file: store.key }}
            "#
        ),
        extra,
        "
        - name: yanqianyu
          match: { path_prefix: /orgs/yanqianyu }
          installation: { id: 14 }
        - name: other
          match: { path_prefix: /orgs/other }
          installation: { id: 15 }
        - name: alice
          match: { path_prefix: /as/alice }
          strip_prefix: true
          user: alice
        ",
    )
}

/// Logs alice in across the fleet: the link opened on replica `start`, the
/// platform's callback on the configured one (replica 1). Returns the link.
pub async fn log_in_across(fleet: &Fleet, fake: &FakeAtomGit, start: usize) -> String {
    use super::browser::Browser;
    use super::users::STATE_COOKIE;
    let link = fleet.login_link("alice").replace(
        &fleet.replicas[1.min(fleet.replicas.len() - 1)]
            .addr
            .to_string(),
        &fleet.replicas[start].addr.to_string(),
    );
    let mut browser = Browser::new(fleet.replicas[start].addr);
    let url = url::Url::parse(&link).expect("a link");
    let (hop, reply) = browser.fetch(&url).await;
    assert_eq!(reply.status, http::StatusCode::FOUND, "{}", reply.text());
    let authorize = hop.location.expect("the login page redirects");
    assert!(authorize.as_str().starts_with(&fake.url()), "{authorize}");
    let (hop, reply) = browser.fetch(&authorize).await;
    assert!(reply.status.is_redirection(), "{}", reply.text());
    let callback = hop.location.expect("the platform redirects back");
    let state = browser.cookie(STATE_COOKIE).expect("the state cookie");
    let cookie = format!("{STATE_COOKIE}={state}");
    let page = get(
        &fleet.client,
        callback.as_str(),
        &[
            ("cookie", &cookie),
            ("accept", "text/html"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    assert_eq!(page.status, http::StatusCode::OK, "{}", page.text());
    assert!(
        page.text().contains("Logged in as alice"),
        "{}",
        page.text()
    );
    link
}
