//! The binary as an operator runs it: signals, refusal of an open listener,
//! and unix socket listeners.

mod common;

use common::process::{
    exit_and_stderr, serve_logged, signal, try_get, wait_for_reload, wait_healthy,
};
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

const ROUTES: &str = "
- name: yanqianyu
  match: { path_prefix: /orgs/yanqianyu }
  installation: { id: 14 }
- name: slow
  match: { path_prefix: /slow }
  installation: { id: 14 }
";

/// Writes `app.pem` and `config.yaml` (listening on `listen`) into `dir`.
fn write_config(dir: &Path, upstream: &str, listen: &str, extra: &str, routes: &str) -> PathBuf {
    std::fs::write(dir.join("app.pem"), private_key_pem()).unwrap();
    let text = config_yaml_with(
        listen,
        upstream,
        "private_key: { file: app.pem }",
        extra,
        routes,
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_then_exits_zero() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", dead_port());
    let config = write_config(dir.path(), &fake.url(), &addr, "", ROUTES);
    let child = serve_logged(&config);
    wait_healthy(&addr).await;
    assert_eq!(
        try_get(&addr, "/orgs/yanqianyu/repos")
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );

    // The file is unchanged, so only SIGHUP can cause this reload.
    signal(&child, "HUP");
    wait_for_reload(&addr, "ok").await;
    assert_eq!(fake.mints_for(14), 1, "the reload minted nothing");

    // A request in flight when SIGTERM arrives still completes.
    let slow_addr = addr.clone();
    let in_flight = tokio::spawn(async move { try_get(&slow_addr, "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "TERM");
    let reply = bounded(20, "the in-flight request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let (status, stderr) = exit_and_stderr(child).await;
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(
        stderr.contains("SIGHUP received") && stderr.contains("SIGTERM received"),
        "{stderr}"
    );
    assert_no_secret(&stderr);
    fake.shutdown();
}

#[tokio::test]
async fn a_public_listener_without_clients_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "https://api.atomgit.com",
        "0.0.0.0:0",
        "",
        ROUTES,
    );
    let (status, stderr) = exit_and_stderr(serve_logged(&config)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("listen[0]") && stderr.contains("allow_unauthenticated: true"),
        "{stderr}"
    );
    assert!(stderr.contains("clients:"), "{stderr}");
}

#[tokio::test]
async fn allow_unauthenticated_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let port = dead_port();
    let config = write_config(
        dir.path(),
        "https://api.atomgit.com",
        &format!("0.0.0.0:{port}"),
        "allow_unauthenticated: true\n",
        ROUTES,
    );
    let child = serve_logged(&config);
    wait_healthy(&format!("127.0.0.1:{port}")).await;
    signal(&child, "TERM");
    let (status, stderr) = exit_and_stderr(child).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("allow_unauthenticated"),
        "{stderr}"
    );
}

/// One GET over a unix socket.
async fn get_unix(socket: &Path, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_unix_socket_listener_serves_with_its_mode_and_is_removed_on_exit() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    // A stale socket file, as a crashed run leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let config = write_config(dir.path(), &fake.url(), "unix:proxy.sock", "", ROUTES);
    let child = serve_logged(&config);
    bounded(30, "the socket to answer", async {
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let (status, body) = get_unix(&socket, "/orgs/yanqianyu/repos").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("yanqianyu/repo-1"), "{body}");
    let (status, _) = get_unix(&socket, "/_proxy/healthz").await;
    assert_eq!(status, StatusCode::OK);
    signal(&child, "TERM");
    let (status, stderr) = exit_and_stderr(child).await;
    assert!(status.success(), "{stderr}");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    fake.shutdown();
}

#[tokio::test]
async fn the_unix_socket_mode_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "https://api.atomgit.com",
        "unix:p.sock",
        "unix_socket_mode: \"0600\"\n",
        ROUTES,
    );
    let child = serve_logged(&config);
    let socket = dir.path().join("p.sock");
    bounded(30, "the socket to appear", async {
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    signal(&child, "TERM");
    let (status, stderr) = exit_and_stderr(child).await;
    assert!(status.success(), "{stderr}");
}

#[tokio::test]
async fn a_corrupt_grant_store_stops_the_start_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), private_key_pem()).unwrap();
    let config = dir.path().join("config.yaml");
    let pem = "{ file: app.pem }";
    std::fs::write(
        &config,
        format!(
            "listen: [\"127.0.0.1:0\"]\napp:\n  id: 75\n  private_key: {pem}\n  client_id: abc\n  client_secret: {{ value: s3cret }}\n\
             oauth:\n  redirect_uri: http://127.0.0.1:8080/_proxy/oauth/callback\nstore:\n  path: grants.json\n\
             routes:\n  - name: alice\n    match: {{ path_prefix: /as/alice }}\n    user: alice\n"
        ),
    )
    .unwrap();
    let store = dir.path().join("grants.json");
    std::fs::write(&store, b"{\"version\": 1, \"grants\": {\"alice\": ").unwrap();
    let before = std::fs::read(&store).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_atomgit-proxy"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{check_err}");
    assert!(
        check_err.contains("grants.json") && check_err.contains("not a valid grant file"),
        "{check_err}"
    );

    let (status, stderr) = exit_and_stderr(serve_logged(&config)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a valid grant file") && stderr.contains("left untouched"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "the store is never overwritten"
    );
}

#[tokio::test]
async fn a_reload_with_an_inline_key_logs_and_shows_no_key_and_open_files_are_warned() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", dead_port());
    let config = write_config(dir.path(), &fake.url(), &addr, "", ROUTES);
    let key = dir.path().join("app.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = serve_logged(&config);
    wait_healthy(&addr).await;

    // The typo: the PEM itself where `{ value: ... }` belongs.
    let pem = serde_json::to_string(private_key_pem()).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("{ file: app.pem }", &pem);
    std::fs::write(&config, text).unwrap();
    signal(&child, "HUP");
    wait_for_reload(&addr, "error").await;
    let ready = try_get(&addr, "/_proxy/readyz").await.unwrap();
    assert_eq!(ready.status, StatusCode::OK, "the old config serves");
    let body = ready.text();
    assert!(body.contains("app.private_key"), "{body}");
    assert_no_secret(&body);

    signal(&child, "TERM");
    let (status, stderr) = exit_and_stderr(child).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("config reload failed") && stderr.contains("app.private_key"),
        "{stderr}"
    );
    assert_no_secret(&stderr);
    assert!(
        stderr.contains(&format!(
            "permissions 0644 for {} are too open",
            key.display()
        )),
        "the readable key is warned about at start: {stderr}"
    );
    fake.shutdown();
}
