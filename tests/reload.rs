//! Hot reload: by SIGHUP, in-place edit, atomic rename and a Kubernetes-style
//! `..data` symlink swap; broken configs keep the old one serving; reloads
//! mint nothing, drop tokens of a changed app key, and fail no request.

mod common;

use atomgit_fake::FakeAtomGit;
use atomgit_proxy::app::{self, Running};
use atomgit_proxy::config::Config;
use atomgit_proxy::reload::{self, WatchHandle};
use atomgit_proxy::server;
use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROUTES_A: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
";

const ROUTES_AB: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
";

/// A proxy started from a config *file* in a temp folder, with the watcher.
struct FileEnv {
    dir: tempfile::TempDir,
    /// The config file the proxy loaded (may be a symlink).
    config: PathBuf,
    fake: FakeAtomGit,
    running: Option<Running>,
    _watcher: WatchHandle,
    env_client: HttpClient,
    addr: std::net::SocketAddr,
}

impl FileEnv {
    /// Writes `app.pem` and `config.yaml` (unless `layout` already did) and
    /// starts the proxy on it.
    async fn start(routes: &str, layout: impl FnOnce(&Path, &str)) -> FileEnv {
        let dir = tempfile::tempdir().unwrap();
        let fake = start_fake(
            &[(14, "yanqianyu"), (18, "hanshuorg2")],
            Duration::from_secs(3600),
        )
        .await;
        layout(dir.path(), &config_text(&fake, routes));
        let config = dir.path().join("config.yaml");
        let loaded = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let listeners = server::bind(&loaded.listen, loaded.unix_socket_mode).unwrap();
        let running = app::start(loaded, listeners).unwrap();
        let addr = running.addrs[0].parse().unwrap();
        let watcher = reload::watch(running.shared().clone()).unwrap();
        FileEnv {
            dir,
            config,
            fake,
            running: Some(running),
            _watcher: watcher,
            env_client: client(),
            addr,
        }
    }

    async fn plain(routes: &str) -> FileEnv {
        Self::start(routes, |dir, text| {
            std::fs::write(dir.join("app.pem"), private_key_pem()).unwrap();
            std::fs::write(dir.join("config.yaml"), text).unwrap();
        })
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        let url = format!("http://{}{path}", self.addr);
        send(&self.env_client, request(Method::GET, &url, &[], full(""))).await
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn reloads(&self, outcome: &str) -> u64 {
        common::process::reloads(&self.running().shared().metrics.encode(), outcome)
    }

    /// Polls until `path` answers `status` (bounded).
    async fn wait_for_status(&self, path: &str, status: StatusCode) {
        bounded(
            10,
            &format!("waiting for {path} to answer {status}"),
            async {
                loop {
                    if self.get(path).await.status == status {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await
    }

    async fn shutdown(mut self) {
        self.env_client = client();
        if let Some(r) = self.running.take() {
            bounded(35, "shutdown", r.shutdown()).await;
        }
        self.fake.shutdown();
    }
}

fn config_text(fake: &FakeAtomGit, routes: &str) -> String {
    config_yaml(&fake.url(), "{ file: app.pem }", "", routes)
}

#[tokio::test]
async fn an_in_place_edit_is_picked_up() {
    let env = FileEnv::plain(ROUTES_A).await;
    env.get("/repos/hanshuorg2/x")
        .await
        .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
    // Truncate and rewrite the same inode, as `>` in a shell does.
    std::fs::write(&env.config, config_text(&env.fake, ROUTES_AB)).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    assert_eq!(env.reloads("ok"), 1, "one burst of events, one reload");
    env.shutdown().await;
}

#[tokio::test]
async fn an_atomic_rename_is_picked_up() {
    let env = FileEnv::plain(ROUTES_A).await;
    let tmp = env.dir.path().join(".config.yaml.swp");
    std::fs::write(&tmp, config_text(&env.fake, ROUTES_AB)).unwrap();
    std::fs::rename(&tmp, &env.config).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    env.shutdown().await;
}

/// The layout a Kubernetes ConfigMap volume has: files are symlinks through
/// `..data`, itself a symlink to a timestamped folder that is swapped whole.
fn configmap_version(dir: &Path, name: &str, text: &str) {
    let version = dir.join(name);
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("config.yaml"), text).unwrap();
    std::fs::write(version.join("app.pem"), private_key_pem()).unwrap();
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    let env = FileEnv::start(ROUTES_A, |dir, text| {
        configmap_version(dir, "..2026_11_24_01", text);
        std::os::unix::fs::symlink("..2026_11_24_01", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
        std::os::unix::fs::symlink("..data/app.pem", dir.join("app.pem")).unwrap();
    })
    .await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    let dir = env.dir.path();
    configmap_version(dir, "..2026_11_24_02", &config_text(&env.fake, ROUTES_AB));
    std::os::unix::fs::symlink("..2026_11_24_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_24_01")).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    env.shutdown().await;
}

#[tokio::test]
async fn invalid_yaml_keeps_the_old_config_and_says_so() {
    let env = FileEnv::plain(ROUTES_A).await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    std::fs::write(&env.config, "routes: [ this is: not yaml").unwrap();
    bounded(10, "the failed reload is counted", async {
        while env.reloads("error") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK,
        "old config serves"
    );
    let ready = env.get("/_proxy/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "a failed reload does not take the replica out"
    );
    let error = ready.json()["config"]["last_reload_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("config.yaml") && error.contains("line"),
        "{error}"
    );
    assert!(
        env.running()
            .shared()
            .metrics
            .encode()
            .contains("atomgit_proxy_config_last_reload_failed 1")
    );
    // Fixing the file clears the failure.
    std::fs::write(&env.config, config_text(&env.fake, ROUTES_AB)).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    assert!(
        env.get("/_proxy/readyz").await.json()["config"]
            .get("last_reload_error")
            .is_none()
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_missing_key_file_keeps_the_old_config() {
    let env = FileEnv::plain(ROUTES_A).await;
    let text = config_text(&env.fake, ROUTES_AB).replace("app.pem", "rotated.pem");
    std::fs::write(&env.config, text).unwrap();
    bounded(10, "the failed reload is counted", async {
        while env.reloads("error") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let last = env
        .running()
        .shared()
        .reload
        .lock()
        .unwrap()
        .last_error
        .clone()
        .unwrap();
    assert!(
        last.contains("app.private_key") && last.contains("rotated.pem"),
        "{last}"
    );
    env.get("/repos/hanshuorg2/x")
        .await
        .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    // The key appears: the watcher sees the folder change and the reload succeeds.
    std::fs::write(env.dir.path().join("rotated.pem"), private_key_pem()).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_keeps_the_credential_mints_nothing() {
    let env = FileEnv::plain(ROUTES_A).await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    assert_eq!(env.fake.mints_for(14), 1);
    for _ in 0..3 {
        reload::reload(env.running().shared()).unwrap();
    }
    std::fs::write(&env.config, config_text(&env.fake, ROUTES_AB)).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    assert_eq!(env.fake.mints_for(14), 1, "reloads reuse the cached token");
    env.shutdown().await;
}

#[tokio::test]
async fn a_changed_app_key_drops_its_tokens() {
    let env = FileEnv::plain(ROUTES_A).await;
    assert_eq!(
        env.get("/orgs/yanqianyu/repos").await.status,
        StatusCode::OK
    );
    // A key the fake does not know: if the old token were still used the
    // request would succeed; with it dropped, the new key's mint is refused.
    let (other_key, _) = atomgit_fake::generate_app_key();
    std::fs::write(env.dir.path().join("app.pem"), other_key).unwrap();
    bounded(10, "the key change is reloaded", async {
        while env.reloads("ok") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    env.get("/orgs/yanqianyu/repos")
        .await
        .assert_proxy_error(StatusCode::BAD_GATEWAY, "token_endpoint_failed");
    assert_eq!(env.fake.mints_for(14), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_streamed_transfer_survives_a_reload() {
    let routes = format!(
        "{ROUTES_A}- name: download\n  match: {{ path_prefix: /download }}\n  installation: {{ id: 14 }}\n"
    );
    let env = FileEnv::plain(&routes).await;
    const SIZE: u64 = 100 * 1024 * 1024;
    let url = format!("http://{}/download/{SIZE}", env.addr);
    let resp = env
        .env_client
        .request(request(Method::GET, &url, &[], full("")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut hasher, mut got, mut reloaded) = (Sha256::new(), 0u64, false);
    bounded(120, "download", async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                hasher.update(&data);
                got += data.len() as u64;
            }
            if !reloaded && got > SIZE / 4 {
                // Swap in a config without the route this transfer took.
                std::fs::write(&env.config, config_text(&env.fake, ROUTES_A)).unwrap();
                reload::reload(env.running().shared()).unwrap();
                reloaded = true;
            }
        }
    })
    .await;
    assert!(reloaded);
    assert_eq!(got, SIZE);
    let mut want = Sha256::new();
    let pattern: Vec<u8> = (0..SIZE.min(251 * 4096)).map(|i| (i % 251) as u8).collect();
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(pattern.len() as u64 / 251 * 251) as usize;
        want.update(&pattern[..n]);
        left -= n as u64;
    }
    assert_eq!(hasher.finalize(), want.finalize());
    // The new config is in force for new requests.
    env.get("/download/10")
        .await
        .assert_proxy_error(StatusCode::NOT_FOUND, "no_route");
    env.shutdown().await;
}

#[tokio::test]
async fn fifty_rapid_reloads_fail_no_request() {
    let env = FileEnv::plain(ROUTES_AB).await;
    let texts = [
        config_text(&env.fake, ROUTES_AB),
        config_text(
            &env.fake,
            &format!(
                "{ROUTES_AB}- name: extra\n  match: {{ path_prefix: /extra }}\n  installation: {{ id: 18 }}\n"
            ),
        ),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, addr) = (stop.clone(), env.addr);
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let path = if (i + w) % 2 == 0 {
                    "/orgs/yanqianyu/repos"
                } else {
                    "/repos/hanshuorg2/x"
                };
                let url = format!("http://{addr}{path}");
                statuses.push(
                    send(&c, request(Method::GET, &url, &[], full("")))
                        .await
                        .status,
                );
            }
            statuses
        }));
    }
    for i in 0..50 {
        std::fs::write(&env.config, &texts[i % 2]).unwrap();
        reload::reload(env.running().shared()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        let statuses = bounded(60, "workers", w).await.unwrap();
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
    assert!(total >= 50, "requests ran during the reloads: {total}");
    assert!(env.reloads("ok") >= 50);
    assert_eq!(
        env.fake.mints_for(14) + env.fake.mints_for(18),
        2,
        "reloads minted nothing"
    );
    env.shutdown().await;
}

/// A client secret that must never be echoed.
const CLIENT_SECRET: &str = "cs-9f8e7d6c5b4a39281706f5e4d3c2b1a0";

#[tokio::test]
async fn a_secret_written_inline_is_named_but_never_shown() {
    let env = FileEnv::plain(ROUTES_A).await;
    let good = config_text(&env.fake, ROUTES_A);
    let pem = serde_json::to_string(private_key_pem()).unwrap();
    let typos = [
        (good.replace("{ file: app.pem }", &pem), "app.private_key"),
        (
            good.replace(
                "  private_key:",
                &format!("  client_secret: \"{CLIENT_SECRET}\"\n  private_key:"),
            ),
            "app.client_secret",
        ),
    ];
    for (text, field) in typos {
        std::fs::write(&env.config, text).unwrap();
        let error = reload::reload(env.running().shared()).unwrap_err();
        assert!(
            error.contains(field) && error.contains("found a string"),
            "{error}"
        );
        let ready = env.get("/_proxy/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "the old config serves");
        let body = ready.text();
        let shown = ready.json()["config"]["last_reload_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(shown.contains(field), "{body}");
        assert_no_secret(&body);
        assert!(!body.contains(CLIENT_SECRET), "the secret leaked: {body}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn after_a_failed_reload_only_the_files_it_names_retry_it() {
    let env = FileEnv::plain(ROUTES_A).await;
    let text = config_text(&env.fake, ROUTES_AB).replace("app.pem", "rotated.pem");
    std::fs::write(&env.config, text).unwrap();
    bounded(10, "the failed reload is counted", async {
        while env.reloads("error") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Other files in the folder change (the grant store being rewritten,
    // an editor's swap file): nothing the failed config names.
    let other = env.dir.path().join("grants.json");
    for i in 0..5 {
        std::fs::write(&other, format!("{{\"version\": 1, \"n\": {i}}}")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for a debounce and the first backoff to have passed.
    tokio::time::sleep(reload::BACKOFF_MIN + reload::DEBOUNCE * 3).await;
    assert_eq!(env.reloads("error"), 1, "unrelated files made no attempt");
    // The file the failed config names appears: that is retried, and works.
    std::fs::write(env.dir.path().join("rotated.pem"), private_key_pem()).unwrap();
    env.wait_for_status("/repos/hanshuorg2/x", StatusCode::OK)
        .await;
    assert_eq!(env.reloads("error"), 1);
    assert_eq!(env.reloads("ok"), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_config_that_keeps_failing_is_retried_with_backoff() {
    let env = FileEnv::plain(ROUTES_A).await;
    // A broken config rewritten every 400 ms (past the debounce each time):
    // without a backoff every write would be an attempt.
    for i in 0..8 {
        std::fs::write(&env.config, format!("routes: [ broken {i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let attempts = env.reloads("error");
    // Attempts at most at ~0, 1 s and 3 s: the 3.2 s of writes allow three.
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} attempts in 3.2 s of writes"
    );
    // Fixed, it reloads (after the current backoff).
    std::fs::write(&env.config, config_text(&env.fake, ROUTES_AB)).unwrap();
    bounded(15, "the fixed config is reloaded", async {
        while env.reloads("ok") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    env.shutdown().await;
}
