//! The user-grant tests' environment: a fake AtomGit, a proxy with a user
//! route in front of it, and a config file and grant store in a fresh folder.
//!
//! The proxy's port is bound before the config is written, because the
//! OAuth `redirect_uri` has to name it.

use super::browser::{Browser, Page};
use super::{
    HttpClient, Reply, app_key, client, config_yaml_with, fake_options, get, now_ms, reindent,
    start_fake_with,
};
use atomgit_fake::{FakeAtomGit, FakeOAuth, FakeOptions, TokenOwner};
use atomgit_proxy::app::{self, Running};
use atomgit_proxy::config::{Config, OAuthEndpoints};
use atomgit_proxy::server::{self, Listener};
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The user every test logs in (the fake's one person).
pub const USER: &str = "alice";
/// The login page's cookie, as `src/admin/login.rs` names it.
pub const STATE_COOKIE: &str = "atomgit_proxy_oauth_state";

/// Sleeps (real time) until the wall clock reaches `at_ms`.
pub async fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// How the fake's OAuth side behaves in one test.
pub fn fake_oauth(access_lifetime: Duration) -> FakeOAuth {
    FakeOAuth {
        access_lifetime,
        rotate_refresh_tokens: true,
        ..FakeOAuth::default()
    }
}

/// A fake AtomGit, a proxy with the `alice` user route in front of it, and
/// the folder holding the config file, the app key and the grant store.
pub struct UserEnv {
    pub fake: FakeAtomGit,
    /// `None` while stopped (see [`UserEnv::restart`]).
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub client: HttpClient,
    pub config_path: PathBuf,
    pub store_path: PathBuf,
    pub oauth: OAuthEndpoints,
    /// Holds the folder; dropped (and removed) last.
    pub dir: tempfile::TempDir,
}

impl UserEnv {
    pub async fn start(oauth: FakeOAuth) -> UserEnv {
        let fake = start_oauth_fake(oauth).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let dir = tempfile::tempdir().expect("a temporary folder");
        // The store gets a folder of its own, so a test can make that folder
        // read-only without touching the config.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("create the state folder");
        std::fs::write(dir.path().join("app.pem"), &app_key().0).expect("write app.pem");
        let config_path = dir.path().join("proxy.yaml");
        std::fs::write(&config_path, config_yaml(addr, &fake)).expect("write the config");
        let config = Config::load(&config_path)
            .unwrap_or_else(|e| panic!("the test config is invalid: {e}"));
        let oauth = config.oauth.clone().expect("the config has `oauth:`");
        let store_path = config.store_path.clone().expect("the config has `store:`");
        let running = app::start(config, vec![Listener::Tcp(listener)]).expect("start the proxy");
        UserEnv {
            fake,
            running: Some(running),
            addr,
            client: client(),
            config_path,
            store_path,
            oauth,
            dir,
        }
    }

    /// `path` on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        get(&self.client, &self.url(path), &[]).await
    }

    /// A fresh one-time login link for `user`, as `atomgit-proxy login` prints it.
    pub fn login_link(&self, user: &str) -> String {
        atomgit_proxy::credentials::login_link::link_for(
            &self.oauth.redirect_uri,
            &self.store_path,
            user,
        )
        .unwrap_or_else(|e| panic!("cannot make a login link: {e:#}"))
    }

    /// A browser that keeps this proxy's cookies.
    pub fn browser(&self) -> Browser {
        Browser::new(self.addr)
    }

    /// Logs `alice` in with a fresh link and checks the success page.
    pub async fn log_in(&self) -> Page {
        let page = self.browser().open(&self.login_link(USER)).await;
        assert_eq!(page.status, StatusCode::OK, "login failed: {}", page.body);
        assert!(
            page.body.contains("Logged in as alice"),
            "unexpected success page: {}",
            page.body
        );
        page
    }

    /// The store file as JSON (`Null` if there is no file yet).
    pub fn store_json(&self) -> Value {
        match std::fs::read(&self.store_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "the store file is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => panic!("cannot read {}: {e}", self.store_path.display()),
        }
    }

    /// `user`'s grant in the store file, if any.
    pub fn stored_grant(&self, user: &str) -> Option<Value> {
        self.store_json()
            .get("grants")
            .and_then(|g| g.get(user))
            .cloned()
    }

    /// `user`'s grant in the store file; fails the test without one.
    pub fn grant(&self, user: &str) -> Value {
        self.stored_grant(user)
            .unwrap_or_else(|| panic!("no grant for {user} in {}", self.store_json()))
    }

    /// Rewrites the store file so alice's token (still valid at the fake)
    /// reads as issued `age` ago with `left_ms` to go, as if the proxy had
    /// been down that long.
    pub fn age_grant(&self, age: Duration, left_ms: i64) {
        let mut store = self.store_json();
        let grant = &mut store["grants"][USER];
        assert!(grant.is_object(), "no grant to age: {store}");
        let now = now_ms() as i64;
        grant["updated_at_ms"] = Value::from(now - age.as_millis() as i64);
        grant["access_expires_at_ms"] = Value::from(now + left_ms);
        self.write_store(&store);
    }

    /// Replaces the store file with `store`, as another process would.
    pub fn write_store(&self, store: &Value) {
        let bytes = serde_json::to_vec_pretty(store).expect("JSON");
        atomgit_proxy::credentials::grants_file::write_atomically(&self.store_path, &bytes)
            .expect("rewrite the store");
    }

    /// Requests the user route and checks that the fake saw exactly one
    /// `Authorization: Bearer atu_...` header, belonging to `alice`; returns
    /// that token.
    pub async fn use_user_route(&self) -> String {
        let before = self.fake.api_requests().len();
        let reply = self.get("/as/alice/user").await;
        assert_eq!(reply.status, StatusCode::OK, "user route: {}", reply.text());
        assert_eq!(reply.json()["login"], USER);
        let seen = self.fake.api_requests();
        assert_eq!(seen.len(), before + 1, "one request reached the fake");
        let last = &seen[seen.len() - 1];
        assert_eq!(last.path, "/user", "the route prefix is stripped");
        self.owned_user_token(&last.headers)
    }

    /// The one `Bearer atu_` token in `headers`, checked to be alice's.
    pub fn owned_user_token(&self, headers: &HeaderMap) -> String {
        let values: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values.len(), 1, "exactly one Authorization header");
        let token = values[0]
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("not a bearer header: {:?}", values[0]))
            .to_owned();
        assert!(token.starts_with("atu_"), "a user token: {token}");
        assert_eq!(
            self.fake.token_owner(&token),
            Some(TokenOwner::User(USER.into()))
        );
        token
    }

    /// Stops the proxy (draining) and starts a new one from the same config
    /// file on the same address: nothing survives but the files.
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let config = Config::load(&self.config_path)
            .unwrap_or_else(|e| panic!("the test config is invalid: {e}"));
        let listeners = server::bind(&config.listen, config.unix_socket_mode)
            .unwrap_or_else(|e| panic!("cannot bind {} again: {e}", self.addr));
        self.running = Some(app::start(config, listeners).expect("restart the proxy"));
        // Connections pooled to the old proxy are closed by its shutdown.
        self.client = client();
    }

    /// Rewrites the config file with `fake` as upstream and authorize page
    /// (everything else the same) and reloads it.
    pub fn reload_with_upstream(&self, fake: &FakeAtomGit) {
        std::fs::write(&self.config_path, config_yaml(self.addr, fake))
            .expect("rewrite the config");
        let running = self.running.as_ref().expect("the proxy runs");
        atomgit_proxy::reload::reload(running.shared())
            .unwrap_or_else(|e| panic!("the reload failed: {e}"));
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.fake.shutdown();
    }
}

/// A fake AtomGit on `127.0.0.1:0` that trusts [`app_key`] and knows alice.
pub async fn start_oauth_fake(oauth: FakeOAuth) -> FakeAtomGit {
    start_fake_with(FakeOptions {
        oauth,
        ..fake_options()
    })
    .await
}

/// The config: the proxy on `addr`, the fake as upstream and authorize page,
/// the store in `state/`, and one user route.
fn config_yaml(addr: SocketAddr, fake: &FakeAtomGit) -> String {
    oauth_config_yaml(
        addr,
        addr,
        fake,
        "path: state/grants.json",
        "",
        "
        - name: alice
          match: { path_prefix: /as/alice }
          strip_prefix: true
          user: alice
        ",
    )
}

/// A config with the fake's OAuth client (the app key in `app.pem`): the
/// proxy on `addr`, the fake as upstream and authorize page, the platform's
/// callback to `callback`, `store` (the `store:` keys, any indentation), a
/// 5 s shutdown, `extra` (more top-level YAML) and `routes`.
pub fn oauth_config_yaml(
    addr: SocketAddr,
    callback: SocketAddr,
    fake: &FakeAtomGit,
    store: &str,
    extra: &str,
    routes: &str,
) -> String {
    let defaults = FakeOAuth::default();
    let upstream = fake.url();
    let top_level = format!(
        "oauth:\n  authorize_url: {upstream}/login/oauth/authorize\n  \
         redirect_uri: http://{callback}/_proxy/oauth/callback\n\
         store:\n{store}\
         timeouts:\n  shutdown: 5s\n\
         {extra}",
        store = reindent(store, 2),
        extra = reindent(extra, 0),
    );
    config_yaml_with(
        &addr.to_string(),
        &upstream,
        &format!(
            r#"
            private_key: {{ file: app.pem }}
            client_id: "{client_id}"
            client_secret: {{ value: "{client_secret}" }}
            "#,
            client_id = defaults.client_id,
            client_secret = defaults.client_secret,
        ),
        &top_level,
        routes,
    )
}

/// Makes `dir` read-only for this process, even as root (where mode bits do
/// not bind): chmod, and the immutable attribute when that is not enough.
/// Undone on drop, so a failing test does not leave an undeletable folder.
pub struct ReadOnlyDir(PathBuf);

impl ReadOnlyDir {
    pub fn new(dir: &Path) -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
            .expect("chmod the folder");
        let guard = ReadOnlyDir(dir.to_path_buf());
        let probe = dir.join(".probe");
        if std::fs::write(&probe, b"x").is_ok() {
            std::fs::remove_file(&probe).expect("remove the probe");
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot make {} read-only (chattr +i failed)",
                dir.display()
            );
        }
        assert!(
            std::fs::write(&probe, b"x").is_err(),
            "{} is still writable",
            dir.display()
        );
        guard
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
    }
}

/// Runs the built `atomgit-proxy` binary with `args` (blocking work off the
/// runtime), killing it if it runs longer than 30 s.
pub async fn run_cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let task = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atomgit-proxy"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the atomgit-proxy binary");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let out = child.wait_with_output();
                    panic!("atomgit-proxy {args:?} did not finish within 30s: {out:?}");
                }
            }
        }
        child
            .wait_with_output()
            .expect("collect the binary's output")
    });
    task.await
        .unwrap_or_else(|e| panic!("the CLI task failed: {e}"))
}
