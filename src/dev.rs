//! `atomgit-proxy dev`: the zero-setup demo.
//!
//! Starts the embedded fake AtomGit on a free loopback port with a freshly
//! generated app key and two org installations, then the proxy in front of it
//! with a config that exercises every kind of installation route, and prints
//! curl commands that work as printed.
//!
//! Only with the `dev` cargo feature (on by default): the fake lives in the
//! `atomgit-fake` crate, which a `--no-default-features` build leaves out.

use crate::config::Config;
use crate::credentials::login_link;
use crate::{app, server};
use anyhow::Context as _;
use atomgit_fake::{self as fake, FakeAtomGit, FakeInstallation, FakeOptions};
use std::net::SocketAddr;
use std::path::Path;

/// The demo's app id, as in the platform's documentation.
const APP_ID: u64 = 75;

/// The demo config: the fake's URL, the generated key and the store filled in.
pub fn config_yaml(
    listen: SocketAddr,
    upstream: &str,
    private_key_pem: &str,
    store: &Path,
) -> String {
    // A JSON string is a valid YAML double-quoted scalar: the PEM's newlines
    // survive without any YAML block juggling.
    let key = serde_json::to_string(private_key_pem).unwrap_or_default();
    format!(
        r#"listen: ["{listen}"]
upstream: {upstream}
app:
  id: {APP_ID}
  private_key: {{ value: {key} }}
  client_id: "{client_id}"
  client_secret: {{ value: "{client_secret}" }}
oauth:
  authorize_url: {upstream}/login/oauth/authorize
  redirect_uri: http://{listen}/_proxy/oauth/callback
store:
  path: {store}
routes:
  - name: alice
    match: {{ path_prefix: /as/alice }}
    strip_prefix: true
    user: alice
  - name: yanqianyu
    match: {{ path_prefix: /orgs/yanqianyu }}
    installation: {{ account: yanqianyu }}
  - name: hanshu
    match: {{ path_prefix: /as/hanshu }}
    strip_prefix: true
    installation: {{ id: 18 }}
  - name: repos
    match: {{ path_prefix: /repos }}
    installation: auto
  - name: orgs
    match: {{ path_prefix: /orgs }}
    installation: auto
"#,
        client_id = fake::FakeOAuth::default().client_id,
        client_secret = fake::FakeOAuth::default().client_secret,
        store = serde_json::to_string(&store.display().to_string()).unwrap_or_default(),
    )
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let (private_pem, public_pem) = fake::generate_app_key();
    let fake_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake = FakeAtomGit::start(
        fake_listener,
        FakeOptions {
            app_id: APP_ID,
            app_public_key_pem: public_pem,
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
        },
    )
    .await
    .context("starting the fake AtomGit")?;
    let state_dir = state_dir().context("creating the demo's temporary folder")?;
    let store = state_dir.path().join("grants.json");
    let yaml = config_yaml(listen, &fake.url(), &private_pem, &store);
    let config = Config::from_yaml(&yaml, Path::new("."), "dev config")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let link = match &config.oauth {
        Some(oauth) => login_link::link_for(&oauth.redirect_uri, &store, "alice")?,
        None => String::new(),
    };
    let listeners = server::bind(&config.listen, config.unix_socket_mode).with_context(|| {
        format!("is another process on {listen}? try `atomgit-proxy dev --listen 127.0.0.1:8081`")
    })?;
    let running = app::start(config, listeners).map_err(anyhow::Error::msg)?;
    // The cookie jar the printed curl writes goes in the private folder too,
    // not at a fixed name in /tmp that another user could plant.
    let cookies = state_dir.path().join("cookies.txt");
    print_banner(listen, &fake, &link, &cookies);
    app::signals(running.shared().clone()).await;
    running.shutdown().await;
    fake.shutdown();
    // Dropping it removes the folder, grants and link key with it.
    drop(state_dir);
    Ok(())
}

/// The demo's grants and link key live in a folder made for this run only:
/// fresh (a predictable name could be planted in advance by another user,
/// with a link key of theirs that the demo would adopt), private (0700), and
/// removed when the returned value is dropped.
pub fn state_dir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("atomgit-proxy-dev-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

fn print_banner(listen: SocketAddr, fake: &FakeAtomGit, link: &str, cookies: &Path) {
    let p = format!("http://{listen}");
    println!(
        r#"atomgit-proxy dev: a fake AtomGit runs at {fake_url} (app 75, installations yanqianyu=14, hanshuorg2=18);
the proxy listens on {p} and injects installation tokens. Try:

  curl -i {p}/orgs/yanqianyu/repos                 # route `yanqianyu`: installation by account; note the Link header
  curl -i '{p}/orgs/yanqianyu/repos?page=2&per_page=2'   # follow the rewritten link
  curl -s {p}/repos/hanshuorg2/demo                # route `repos`: installation picked from the path
  curl -s {p}/as/hanshu/orgs/hanshuorg2/repos      # route `hanshu`: installation id 18, prefix stripped
  curl -s {p}/orgs/nobody/repos                    # 404 installation_not_found
  curl -s {p}/_proxy/readyz                        # ready? with each credential's state
  curl -s {p}/_proxy/metrics

User routes act as a person. `alice` has no grant yet:
  curl -s {p}/as/alice/user                        # 503 grant_missing
Log her in (the fake AtomGit approves at once; the link works once, for 10 minutes):
  curl -sL -c '{cookies}' '{link}'
  curl -s {p}/as/alice/user                        # now answered with alice's atu_ token

Ctrl-C stops."#,
        fake_url = fake.url(),
        cookies = cookies.display(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_state_dir_is_fresh_private_and_removed() {
        // The folder the demo used to take: planted, it must not be reused.
        let planted =
            std::env::temp_dir().join(format!("atomgit-proxy-dev-{}", std::process::id()));
        std::fs::create_dir_all(&planted).unwrap();
        let (a, b) = (state_dir().unwrap(), state_dir().unwrap());
        assert_ne!(a.path(), b.path(), "each run gets its own folder");
        assert_ne!(a.path(), planted.as_path());
        assert!(
            std::fs::read_dir(a.path()).unwrap().next().is_none(),
            "it is empty"
        );
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "dropping it removes it");
        let _ = std::fs::remove_dir(&planted);
    }
}
