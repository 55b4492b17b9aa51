//! Several apps: `apps:` names app identities, each route's credential
//! belongs to its app (its own JWT, installation list and tokens), `check`
//! names what is wrong, and `login` takes `--app` when it must.

mod common;

use atomgit_fake::{FakeApp, FakeInstallation, FakeOptions};
use common::users::run_cli;
use common::{TestEnv, bounded, fake_options, single_bearer, start_fake_with};
use http::StatusCode;
use std::sync::OnceLock;

/// The second app's key (the first is `common::app_key`).
fn backup_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(atomgit_fake::generate_app_key)
}

fn inline(pem: &str) -> String {
    format!("{{ value: {} }}", serde_json::to_string(pem).unwrap())
}

const ROUTES: &str = "
routes:
  - name: by-main
    match: { path_prefix: /orgs/yanqianyu/main }
    app: main
    installation: { id: 14 }
  - name: by-backup
    match: { path_prefix: /orgs/yanqianyu }
    app: backup
    installation: { account: yanqianyu }
";

fn two_apps_yaml(upstream: &str, routes: &str) -> String {
    format!(
        "listen: [\"127.0.0.1:0\"]\nupstream: {upstream}\napps:\n  main: {{ id: 75, private_key: {} }}\n  backup: {{ id: 76, private_key: {} }}\n{routes}",
        inline(common::private_key_pem()),
        inline(&backup_key().0),
    )
}

#[tokio::test]
async fn each_routes_token_is_minted_by_its_own_app() {
    bounded(60, "two apps", async {
        let fake = start_fake_with(FakeOptions {
            installations: vec![FakeInstallation {
                id: 14,
                account: "yanqianyu".into(),
            }],
            extra_apps: vec![FakeApp {
                id: 76,
                public_key_pem: backup_key().1.clone(),
            }],
            ..fake_options()
        })
        .await;
        let yaml = two_apps_yaml(&fake.url(), ROUTES);
        let env = TestEnv::start_yaml(fake, &yaml).await;
        assert_eq!(
            env.get("/orgs/yanqianyu/main/a").await.status,
            StatusCode::OK
        );
        assert_eq!(env.get("/orgs/yanqianyu/b").await.status, StatusCode::OK);
        let main = single_bearer(&env.last_api_request("/orgs/yanqianyu/main/a").headers);
        let backup = single_bearer(&env.last_api_request("/orgs/yanqianyu/b").headers);
        assert_eq!(env.fake.token_app(&main), Some(75));
        assert_eq!(env.fake.token_app(&backup), Some(76));
        assert_eq!(env.fake.mints_for(14), 2, "one token per app");
        // Each app keeps its own token.
        assert_eq!(
            env.get("/orgs/yanqianyu/main/c").await.status,
            StatusCode::OK
        );
        assert_eq!(env.get("/orgs/yanqianyu/d").await.status, StatusCode::OK);
        assert_eq!(env.fake.mints_for(14), 2);
        let ready = env.get("/_proxy/readyz").await.json();
        let apps: Vec<&str> = ready["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(apps, ["backup", "main"]);
        // The status page names every app, and each route's.
        let status = env.get("/_proxy/status").await;
        assert_eq!(status.status, StatusCode::OK);
        let page = status.text();
        for shown in [
            "backup (id 76)",
            "main (id 75)",
            "(app backup)",
            "(app main)",
        ] {
            assert!(page.contains(shown), "{shown} missing:\n{page}");
        }
        env.shutdown().await;
    })
    .await;
}

/// Runs `atomgit-proxy ARGS -c FILE` on `yaml` written to a fresh folder.
async fn cli_on(yaml: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut all: Vec<&str> = args.to_vec();
    let path_text = path.to_string_lossy().into_owned();
    all.extend(["-c", &path_text]);
    let out = run_cli(&all).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_accepts_apps_and_names_every_problem() {
    bounded(60, "check apps", async {
        let (ok, out, err) = cli_on(&two_apps_yaml("http://127.0.0.1:9", ROUTES), &["check"]).await;
        assert!(ok, "{err}");
        assert!(
            out.contains("main (id 75)") && out.contains("backup (id 76)"),
            "{out}"
        );

        let bad_routes = "
oauth: { redirect_uri: http://127.0.0.1:8080/_proxy/oauth/callback }
store: { path: grants.json }
routes:
  - name: unknown-app
    match: { path_prefix: /a }
    app: spare
    installation: { id: 1 }
  - name: no-app
    match: { path_prefix: /b }
    installation: { id: 1 }
  - name: alice
    match: { path_prefix: /as/alice }
    app: backup
    user: alice
";
        let (ok, _, err) =
            cli_on(&two_apps_yaml("http://127.0.0.1:9", bad_routes), &["check"]).await;
        assert!(!ok);
        for problem in [
            "routes[0] (unknown-app).app: names no app under `apps:`",
            "routes[1] (no-app).app: is required when there are several apps",
            "apps.backup.client_id: is required",
            "apps.backup.client_secret: is required",
        ] {
            assert!(err.contains(problem), "{problem} missing:\n{err}");
        }
        assert!(!err.contains("BEGIN"), "a key leaked:\n{err}");

        let both = format!(
            "app: {{ id: 75, private_key: {} }}\n{}",
            inline(common::private_key_pem()),
            two_apps_yaml("http://127.0.0.1:9", ROUTES)
        );
        let (ok, _, err) = cli_on(&both, &["check"]).await;
        assert!(!ok);
        assert!(
            err.contains("apps: `app:` and `apps:` are both set"),
            "{err}"
        );
        // One app: a route naming it by the shorthand's name is fine; another is not.
        let one = common::config_yaml(
            "http://127.0.0.1:9",
            &common::inline_key(),
            "",
            "- name: a\n  match: { path_prefix: /a }\n  app: main\n  installation: { id: 1 }\n",
        );
        let (ok, _, err) = cli_on(&one, &["check"]).await;
        assert!(!ok);
        assert!(
            err.contains("routes[0] (a).app: names no app under `apps:` (apps: default)"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn login_takes_app_when_there_are_several() {
    bounded(60, "login --app", async {
        let routes = "
oauth: { redirect_uri: http://127.0.0.1:8080/_proxy/oauth/callback }
store: { path: grants.json }
routes:
  - name: alice-main
    match: { path_prefix: /as/alice }
    app: main
    user: alice
  - name: bob-main
    match: { path_prefix: /as/bob }
    app: main
    user: bob
  - name: bob-backup
    match: { path_prefix: /as/bob2 }
    app: backup
    user: bob
";
        let yaml = two_apps_yaml("http://127.0.0.1:9", routes).replace(
            "private_key: { value",
            "client_id: c, client_secret: { value: s }, private_key: { value",
        );
        // alice's routes use one app: it goes into the link.
        let (ok, link, err) = cli_on(&yaml, &["login", "alice"]).await;
        assert!(ok, "{err}");
        assert!(link.contains("app=main"), "{link}");
        // bob's use two: --app says which.
        let (ok, _, err) = cli_on(&yaml, &["login", "bob"]).await;
        assert!(!ok);
        assert!(err.contains("--app"), "{err}");
        let (ok, link, err) = cli_on(&yaml, &["login", "bob", "--app", "backup"]).await;
        assert!(ok, "{err}");
        assert!(link.contains("app=backup"), "{link}");
        let (ok, _, err) = cli_on(&yaml, &["login", "bob", "--app", "spare"]).await;
        assert!(!ok);
        assert!(err.contains("no app named `spare`"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_user_grant_belongs_to_the_app_it_was_obtained_with() {
    bounded(60, "grant per app", async {
        let env = common::users::UserEnv::start(common::users::fake_oauth(
            std::time::Duration::from_secs(8 * 3600),
        ))
        .await;
        let defaults = atomgit_fake::FakeOAuth::default();
        let (upstream, addr) = (env.fake.url(), env.addr);
        let yaml = format!(
            r#"listen: ["{addr}"]
upstream: {upstream}
apps:
  main: {{ id: 75, private_key: {{ file: app.pem }}, client_id: "{cid}", client_secret: {{ value: "{secret}" }} }}
  other: {{ id: 76, private_key: {{ file: app.pem }}, client_id: "other-client", client_secret: {{ value: "x" }} }}
oauth:
  authorize_url: {upstream}/login/oauth/authorize
  redirect_uri: http://{addr}/_proxy/oauth/callback
store: {{ path: state/grants.json }}
routes:
  - name: alice
    match: {{ path_prefix: /as/alice }}
    strip_prefix: true
    app: main
    user: alice
  - name: alice-other
    match: {{ path_prefix: /other/alice }}
    strip_prefix: true
    app: other
    user: alice
"#,
            cid = defaults.client_id,
            secret = defaults.client_secret,
        );
        std::fs::write(&env.config_path, yaml).unwrap();
        atomgit_proxy::reload::reload(env.running.as_ref().unwrap().shared())
            .unwrap_or_else(|e| panic!("the reload failed: {e}"));
        // A link without an app logs in with the app of alice's first route.
        env.log_in().await;
        assert_eq!(env.grant("alice")["bound_to"]["app_id"], 75);
        env.use_user_route().await;
        let other = env.get("/other/alice/user").await;
        other.assert_proxy_error(StatusCode::SERVICE_UNAVAILABLE, "grant_missing");
        env.shutdown().await;
    })
    .await;
}
