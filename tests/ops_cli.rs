//! The operator commands run as the built binary: `healthcheck` against a
//! running proxy (TCP and unix socket) and none, `login --wait` returning
//! once the login is done, and plain text logs without colour codes.

mod common;

use atomgit_proxy::{app, config::Config, server};
use common::users::{USER, UserEnv, fake_oauth, run_cli};
use common::{YANQIANYU_ROUTE, bounded, config_yaml_with, inline_key};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_with_a_running_proxy_and_one_without() {
    bounded(60, "healthcheck", async {
        let mut env = common::TestEnv::start(YANQIANYU_ROUTE, &[(14, "yanqianyu")]).await;
        let url = format!("http://{}", env.addr);
        let out = run_cli(&["healthcheck", "--url", &url]).await;
        assert_eq!(
            code(&out),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // By config: the first listener of the file.
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("proxy.yaml");
        let yaml = format!("listen: [\"{}\"]\napp: {{ id: 1 }}\n", env.addr);
        std::fs::write(&config, yaml).expect("write");
        let config = config.display().to_string();
        let out = run_cli(&["healthcheck", "-c", &config]).await;
        assert_eq!(
            code(&out),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // In an image that sets ATOMGIT_PROXY_CONFIG, `--url` still works
        // (the Kubernetes sidecar's readiness probe asks readyz this way).
        let readyz = format!("{url}/_proxy/readyz");
        let probe = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_atomgit-proxy"))
                .args(["healthcheck", "--url", &readyz])
                .env("ATOMGIT_PROXY_CONFIG", "/nonexistent/config.yaml")
                .output()
                .expect("run healthcheck")
        })
        .await
        .expect("the probe");
        assert_eq!(
            code(&probe),
            Some(0),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );

        env.stop_proxy().await;
        let out = run_cli(&["healthcheck", "--url", &url]).await;
        assert_eq!(code(&out), Some(1), "no proxy, yet healthy");
        let out = run_cli(&["healthcheck", "-c", &config]).await;
        assert_eq!(code(&out), Some(1), "no proxy, yet healthy");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_asks_a_unix_socket_listener() {
    bounded(60, "healthcheck on a unix socket", async {
        let fake = common::start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
        let dir = tempfile::tempdir().expect("a temp dir");
        let yaml = config_yaml_with(
            "unix:proxy.sock",
            &fake.url(),
            &format!("private_key: {}", inline_key()),
            "",
            YANQIANYU_ROUTE,
        );
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let config = Config::load(&path).expect("a valid config");
        let listeners = server::bind(&config.listen, config.unix_socket_mode).expect("bind");
        let running = app::start(config, listeners).expect("start");
        let arg = path.display().to_string();
        let out = run_cli(&["healthcheck", "-c", &arg]).await;
        assert_eq!(
            code(&out),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        running.shutdown().await;
        let out = run_cli(&["healthcheck", "-c", &arg]).await;
        assert_eq!(code(&out), Some(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_wait_returns_once_the_user_has_logged_in() {
    bounded(60, "login --wait", async {
        let env = UserEnv::start(fake_oauth(Duration::from_secs(8 * 3600))).await;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_atomgit-proxy"))
            .args(["login", "-c"])
            .arg(&env.config_path)
            .args([USER, "--wait"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run login --wait");
        let stdout = child.stdout.take().expect("piped stdout");
        // The link is the first line; the command then waits.
        let mut lines = BufReader::new(stdout).lines();
        let link = lines.next_line().await.ok().flatten().unwrap_or_default();
        assert!(link.contains("/_proxy/oauth/login?"), "{link}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            child.try_wait().expect("poll the child").is_none(),
            "login --wait returned before the login"
        );

        let page = env.browser().open(&link).await;
        assert!(page.body.contains("Logged in as alice"), "{}", page.body);
        let status = child.wait().await.expect("login --wait ends");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        assert!(status.success(), "{rest:?}");
        assert!(
            rest.iter().any(|l| l.contains("alice is logged in")),
            "{rest:?}"
        );
        env.shutdown().await;
    })
    .await;
}

/// A config on which `serve` warns (through the log) about a key file others
/// can read, then fails to bind its port, which is taken: the listener that
/// holds the port, the folder (removed on drop) and the config's path.
fn warning_config_on_a_taken_port() -> (std::net::TcpListener, tempfile::TempDir, std::path::PathBuf)
{
    use std::os::unix::fs::PermissionsExt;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, common::private_key_pem()).expect("write the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = dir.path().join("p.yaml");
    let yaml = format!(
        "listen: [\"{}\"]\napp: {{ id: 1, private_key: {{ file: app.pem }} }}\n",
        taken.local_addr().expect("an address")
    );
    std::fs::write(&path, yaml).expect("write");
    (taken, dir, path)
}

#[tokio::test]
async fn text_logs_carry_no_colour_codes_off_a_terminal() {
    // `serve` warns (through the log) about a key file others can read,
    // then fails to bind a port that is taken: a log line, then an exit.
    let (taken, _dir, path) = warning_config_on_a_taken_port();
    let config = path.display().to_string();
    let out = run_cli(&["--log-format", "text", "serve", "-c", &config]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("WARN"), "the warning is logged: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    drop(taken);
}

/// `serve` on a taken port behind a pseudo-terminal (`script` from
/// util-linux), with `NO_COLOR` set or not: what it writes.
fn serve_on_a_terminal(no_color: Option<&str>) -> Option<String> {
    let (_taken, _dir, path) = warning_config_on_a_taken_port();
    let command = format!(
        "{} --log-format text serve -c {}",
        env!("CARGO_BIN_EXE_atomgit-proxy"),
        path.display()
    );
    let mut script = std::process::Command::new("script");
    script.args(["-q", "-e", "-c", &command, "/dev/null"]);
    script.env_remove("NO_COLOR").env("RUST_LOG", "info");
    if let Some(v) = no_color {
        script.env("NO_COLOR", v);
    }
    let out = script.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let Some(coloured) = serve_on_a_terminal(None) else {
        eprintln!("note: no `script` command (util-linux): the terminal case is not tested");
        return;
    };
    assert!(coloured.contains("WARN"), "{coloured:?}");
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = serve_on_a_terminal(Some("1")).expect("script ran before");
    assert!(plain.contains("WARN"), "{plain:?}");
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR=1 still coloured: {plain:?}"
    );
}
