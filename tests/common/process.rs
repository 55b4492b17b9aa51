//! The built `atomgit-proxy` binary as an operator runs it: `serve` as a
//! child process, signals to it, waiting for it to come up, reload or exit,
//! and what it logged.

use super::{Reply, bounded, client, full, request, try_send};
use http::{Method, StatusCode};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// `atomgit-proxy --log-format json serve -c CONFIG`, killed on drop, with
/// `ATOMGIT_PROXY_WORKERS` set to `workers` when given.
fn serve_command(config: &Path, workers: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atomgit-proxy"));
    command
        .args(["--log-format", "json", "serve", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(workers) = workers {
        command.env("ATOMGIT_PROXY_WORKERS", workers);
    }
    command
}

/// Starts `serve` on `config`, its output discarded.
pub fn serve(config: &Path, workers: Option<&str>) -> Child {
    serve_command(config, workers)
        .spawn()
        .expect("run atomgit-proxy serve")
}

/// Starts `serve` on `config` keeping its log (stderr) for [`exit_and_stderr`].
pub fn serve_logged(config: &Path) -> Child {
    serve_command(config, None)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run atomgit-proxy serve")
}

/// [`serve_logged`] with extra environment variables (e.g. `SSL_CERT_FILE`).
pub fn serve_logged_with_env(config: &Path, env: &[(&str, &str)]) -> Child {
    let mut command = serve_command(config, None);
    command.envs(env.iter().copied());
    command
        .stderr(Stdio::piped())
        .spawn()
        .expect("run atomgit-proxy serve")
}

/// Sends the signal `name` (`HUP`, `TERM`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("a running child").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-s", name, &pid])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -s {name} {pid} failed");
}

/// One GET of `path` on the proxy at `addr`; `None` if nothing answered.
pub async fn try_get(addr: &str, path: &str) -> Option<Reply> {
    let url = format!("http://{addr}{path}");
    try_send(&client(), request(Method::GET, &url, &[], full("")))
        .await
        .ok()
}

/// Waits (bounded) until the proxy at `addr` answers its health check.
pub async fn wait_healthy(addr: &str) {
    bounded(30, "the proxy to come up", async {
        while try_get(addr, "/_proxy/healthz")
            .await
            .is_none_or(|r| r.status != StatusCode::OK)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `atomgit_proxy_config_reloads_total{outcome=...}` in a metrics text (0 if absent).
pub fn reloads(metrics: &str, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("atomgit_proxy_config_reloads_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until the proxy at `addr` counts a reload with `outcome`.
pub async fn wait_for_reload(addr: &str, outcome: &str) {
    bounded(10, &format!("a reload with outcome {outcome}"), async {
        loop {
            let metrics = try_get(addr, "/_proxy/metrics").await;
            if metrics.is_some_and(|m| reloads(&m.text(), outcome) >= 1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Waits (bounded) for a [`serve_logged`] child to exit: its status and log.
pub async fn exit_and_stderr(mut child: Child) -> (std::process::ExitStatus, String) {
    let status = bounded(40, "the proxy to exit", child.wait())
        .await
        .expect("wait for the proxy");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("a piped stderr (serve_logged)")
        .read_to_string(&mut err)
        .await
        .expect("read the proxy's stderr");
    (status, err)
}
