//! The binary's `check` and `token` commands, run as a user's script would.

mod common;

use common::{bounded, config_yaml};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_atomgit-proxy");

const GOOD_ROUTES: &str = r#"
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu, methods: [GET, POST] }
  installation: { account: yanqianyu }
- name: hanshu
  match: { path_prefix: /as/hanshu }
  strip_prefix: true
  installation: { id: 18 }
- name: repos
  match: { path_prefix: /repos }
  installation: auto
"#;

/// A temp folder holding the app key as `app.pem` and `text` as `proxy.yaml`.
fn config_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("app.pem"), common::private_key_pem()).expect("write the key");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, text).expect("write the config");
    (dir, path)
}

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("ATOMGIT_PROXY_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the atomgit-proxy binary")
}

/// Runs the binary off the async runtime, so the fake it talks to keeps serving.
async fn run_async(args: &[&str], config: &Path) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let config = config.to_owned();
    let job = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &config)
    });
    bounded(60, "the atomgit-proxy binary", job)
        .await
        .expect("the blocking task")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_good_config_and_summarises_its_routes() {
    let yaml = config_yaml(
        "https://api.atomgit.com",
        "{ file: app.pem }",
        "",
        GOOD_ROUTES,
    );
    let (_dir, path) = config_dir(&yaml);
    let out = run(&["check"], &path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.1:0"),
        "the listener is summarised: {stdout}"
    );
    for (name, prefix) in [
        ("yanqianyu", "/orgs/yanqianyu"),
        ("hanshu", "/as/hanshu"),
        ("repos", "/repos"),
    ] {
        assert!(
            stdout.contains(&format!("{name}: {prefix}")),
            "route {name} is not summarised: {stdout}"
        );
    }
    common::assert_no_secret(&stdout);
    common::assert_no_secret(&stderr);
}

#[test]
fn check_names_the_field_of_every_problem() {
    let bad = r#"listen: ["127.0.0.1:0"]
upstream: http://example.com
app:
  id: 75
  private_key: { file: missing.pem }
routes:
  - name: both
    match: { path_prefix: /orgs/a }
    installation: { id: 1 }
    user: alice
  - name: noslash
    match: { path_prefix: orgs/b }
    installation: auto
"#;
    let (_dir, path) = config_dir(bad);
    let out = run(&["check"], &path);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a bad config passed: {}",
        text(&out.stdout)
    );
    for field in [
        "routes[0] (both).installation",
        "routes[1] (noslash).match.path_prefix",
        "app.private_key",
        "upstream",
    ] {
        assert!(
            stderr.contains(&format!("{field}: ")),
            "{field} is not named:\n{stderr}"
        );
    }
    // Where the key is written once, the line is given too.
    assert!(stderr.contains("line 2: upstream: "), "{stderr}");
    assert!(
        stderr.contains("missing.pem"),
        "the missing file is named: {stderr}"
    );
    assert!(
        stderr.contains("4 problems"),
        "every problem is reported: {stderr}"
    );
}

#[test]
fn check_reports_two_typos_a_missing_key_file_and_a_bad_route_in_line_order() {
    let bad = r#"listen: ["127.0.0.1:0"]
app:
  id: 75
  private_key: { file: missing.pem }
timeout:
  connect: 5s
routes:
  - name: yanqianyu
    match: { path_prefix: /orgs/yanqianyu }
    installation: { id: 14 }
  - name: hanshu
    match: { path_prefix: as/hanshu }
    installation: auto
  - name: repos
    match: { path_prefx: /repos }
    installation: auto
"#;
    let (_dir, path) = config_dir(bad);
    let out = run(&["check"], &path);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "passed: {}", text(&out.stdout));
    assert!(stderr.contains("4 problems"), "{stderr}");
    let expected = [
        "line 4: app.private_key: cannot read ",
        "line 5: (top level): unknown field `timeout`; did you mean `timeouts`?",
        "line 12: routes[1] (hanshu).match.path_prefix: must start with /",
        "line 15: routes[2] (repos).match: unknown field `path_prefx`; did you mean `path_prefix`?",
    ];
    let mut from = 0;
    for want in expected {
        let at = stderr[from..]
            .find(want)
            .unwrap_or_else(|| panic!("{want:?} missing or out of order:\n{stderr}"));
        from += at + want.len();
    }
}

#[test]
fn check_passes_on_the_example_with_an_app_id_and_key_only() {
    let example = include_str!("../config/example.yaml");
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    let key = dir.path().join("secrets/app.pem");
    std::fs::write(&key, common::private_key_pem()).expect("write the key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let path = dir.path().join("local.yaml");
    std::fs::write(&path, example.replace("  id: 75", "  id: 1234")).expect("write");
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("ATOMGIT_PROXY_CONFIG")
        .env_remove("ATOMGIT_CLIENT_SECRET")
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("app:      1234"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_explains_the_usual_key_mistakes_without_quoting_them() {
    let yaml = |key: &str| config_yaml("https://api.atomgit.com", key, "", GOOD_ROUTES);
    // The app's public key where the private key belongs.
    let (dir, path) = config_dir(&yaml("{ file: app.pub }"));
    let public = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
    std::fs::write(dir.path().join("app.pub"), public).expect("write");
    let stderr = text(&run(&["check"], &path).stderr);
    assert!(
        stderr.contains("this is a PUBLIC KEY; the app's private key is needed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("MIIB") && !stderr.contains("InvalidKeyFormat"),
        "{stderr}"
    );
    // A path written where a secret source belongs.
    let (_dir, path) = config_dir(&yaml("secrets/app.pem"));
    let stderr = text(&run(&["check"], &path).stderr);
    assert!(
        stderr.contains("did you mean `{ file: secrets/app.pem }`?"),
        "{stderr}"
    );
}

#[test]
fn check_rejects_an_unknown_top_level_key() {
    let yaml = config_yaml(
        "https://api.atomgit.com",
        "{ file: app.pem }",
        "bogus_setting: 1",
        GOOD_ROUTES,
    );
    let (_dir, path) = config_dir(&yaml);
    let out = run(&["check"], &path);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "an unknown key passed: {}",
        text(&out.stdout)
    );
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("bogus_setting"), "{stderr}");
    let line = yaml
        .lines()
        .position(|l| l.starts_with("bogus_setting"))
        .expect("the key is in the file")
        + 1;
    assert!(
        stderr.contains(&format!("line {line}")),
        "line {line} is not named: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_a_token_the_platform_issued_for_the_route() {
    bounded(120, "token command", async {
        let fake = common::start_fake(
            &[(14, "yanqianyu"), (18, "hanshuorg2")],
            std::time::Duration::from_secs(3600),
        )
        .await;
        let yaml = config_yaml(&fake.url(), "{ file: app.pem }", "", GOOD_ROUTES);
        let (_dir, path) = config_dir(&yaml);

        for (route, id) in [("yanqianyu", 14), ("hanshu", 18)] {
            let out = run_async(&["token", "--route", route], &path).await;
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert!(out.status.success(), "route {route}: {stderr}");
            let token = stdout.trim();
            assert!(token.starts_with("ats_"), "route {route}: {stdout}");
            assert_eq!(
                stdout.lines().count(),
                1,
                "only the token on stdout: {stdout}"
            );
            assert_eq!(
                fake.token_owner(token),
                Some(atomgit_fake::TokenOwner::Installation(id)),
                "route {route}"
            );
            assert!(!stderr.contains(token), "the token was logged: {stderr}");
        }
        assert_eq!(fake.mints_for(14), 1);
        assert_eq!(fake.mints_for(18), 1);

        let out = run_async(&["token", "--route", "nope"], &path).await;
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
        fake.shutdown();
    })
    .await
}

/// A client secret that must never be echoed.
const CLIENT_SECRET: &str = "cs-9f8e7d6c5b4a39281706f5e4d3c2b1a0";

/// The PEM as a YAML block scalar under a key indented by `indent` spaces.
fn pem_block(indent: usize) -> String {
    let pad = " ".repeat(indent + 2);
    let lines: String = common::private_key_pem()
        .lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect();
    format!("|\n{}", lines.trim_end())
}

/// Configs where a secret is written as itself instead of `{ value: ... }`,
/// with the field each must be reported under.
fn inline_secret_configs() -> Vec<(String, &'static str)> {
    let api = "https://api.atomgit.com";
    let pem = serde_json::to_string(common::private_key_pem()).expect("a string");
    let good = config_yaml(api, "{ file: app.pem }", "", GOOD_ROUTES);
    vec![
        (config_yaml(api, &pem, "", GOOD_ROUTES), "app.private_key"),
        (
            config_yaml(api, &pem_block(2), "", GOOD_ROUTES),
            "app.private_key",
        ),
        (
            good.replace(
                "  private_key:",
                &format!("  client_secret: \"{CLIENT_SECRET}\"\n  private_key:"),
            ),
            "app.client_secret",
        ),
        (
            config_yaml(
                api,
                "{ file: app.pem }",
                &format!("clients:\n  - name: ci\n    key: {CLIENT_SECRET}\n"),
                GOOD_ROUTES,
            ),
            "clients[0].key",
        ),
    ]
}

#[test]
fn check_names_an_inline_secret_without_quoting_it() {
    for (yaml, field) in inline_secret_configs() {
        let (_dir, path) = config_dir(&yaml);
        let out = run(&["check"], &path);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{field}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "{field}: expected a mapping like {{ file: PATH }}, {{ env: NAME }} or {{ value: \"...\" }}, found a string"
            )),
            "{field} and the expected shape are named: {stderr}"
        );
        for output in [&stdout, &stderr] {
            common::assert_no_secret(output);
            assert!(
                !output.contains(CLIENT_SECRET),
                "the secret leaked: {output}"
            );
        }
    }
}

#[tokio::test]
async fn serve_refuses_an_inline_secret_without_logging_it() {
    for (yaml, field) in inline_secret_configs() {
        let (_dir, path) = config_dir(&yaml);
        let out = run_async(&["--log-format", "json", "serve"], &path).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{field}: {stderr}");
        assert!(stderr.contains(field), "{stderr}");
        common::assert_no_secret(&stderr);
        assert!(
            !stderr.contains(CLIENT_SECRET),
            "the secret leaked: {stderr}"
        );
    }
}

/// Sets `mode` on each of `files`.
fn chmod(files: &[PathBuf], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

#[test]
fn check_warns_about_secret_files_others_can_read() {
    let yaml = r#"listen: ["127.0.0.1:0"]
app:
  id: 75
  private_key: { file: app.pem }
  client_id: abc
  client_secret: { file: client.secret }
oauth:
  redirect_uri: http://127.0.0.1:8080/_proxy/oauth/callback
store:
  path: grants.json
routes:
  - name: alice
    match: { path_prefix: /as/alice }
    user: alice
"#;
    let (dir, path) = config_dir(yaml);
    let d = dir.path();
    std::fs::write(d.join("client.secret"), CLIENT_SECRET).expect("write");
    std::fs::write(d.join("grants.json"), r#"{"version": 1}"#).expect("write");
    std::fs::write(d.join("grants.json.link-key"), "00".repeat(32)).expect("write");
    let secrets: Vec<PathBuf> = [
        "app.pem",
        "client.secret",
        "grants.json",
        "grants.json.link-key",
    ]
    .iter()
    .map(|f| d.join(f))
    .collect();

    chmod(&secrets, 0o644);
    let out = run(&["check"], &path);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "a warning is no failure: {stderr}");
    assert!(text(&out.stdout).contains("OK"));
    for f in &secrets {
        assert!(
            stderr.contains(&format!(
                "warning: permissions 0644 for {} are too open",
                f.display()
            )),
            "{} is not warned about: {stderr}",
            f.display()
        );
    }
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(CLIENT_SECRET), "{stderr}");

    chmod(&secrets, 0o600);
    let out = run(&["check"], &path);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("permissions"), "0600 is private: {stderr}");
}
