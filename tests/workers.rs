//! Thread per core: the binary serves on `ATOMGIT_PROXY_WORKERS` worker
//! threads, spreads connections over all of them, and drains every one on
//! SIGTERM; `0` serves on the main runtime; a worker's own upstream
//! connections follow a reload to a new upstream. The HTTP/1.1 fast path
//! can be turned off, and the proxy says which it runs.

mod common;

use common::process::{self, signal, try_get, wait_for_reload, wait_healthy};
use common::*;
use http::StatusCode;
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;

const ROUTES: &str = "
- name: slow
  match: { path_prefix: /slow }
  installation: { id: 14 }
";

/// What `ps` shows for a worker thread (`comm` keeps 15 bytes).
const WORKER_COMM: &str = "atomgit-proxy-w";

fn write_config(dir: &Path, upstream: &str, listen: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("app.pem"), private_key_pem()).unwrap();
    let text = config_yaml_with(
        listen,
        upstream,
        "private_key: { file: app.pem }",
        "",
        ROUTES,
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, text).unwrap();
    config
}

fn serve(dir: &Path, upstream: &str, listen: &str, workers: &str) -> Child {
    process::serve(&write_config(dir, upstream, listen), Some(workers))
}

/// Each worker thread's id and how often it has woken up (`voluntary_ctxt_switches`):
/// an idle worker sleeps in `epoll_wait`, so the count only moves when it serves.
fn workers_of(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != WORKER_COMM {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let wakeups = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((task.display().to_string(), wakeups));
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_worker_serves_and_sigterm_drains_them_all() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", dead_port());
    let mut child = serve(dir.path(), &fake.url(), &addr, "3");
    let pid = child.id().unwrap();
    wait_healthy(&addr).await;
    let before = workers_of(pid);
    assert_eq!(before.len(), 3, "worker threads: {before:?}");

    // Six connections at once, each with a slow request: two per worker.
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { try_get(&addr, "/slow/1500").await })
        })
        .collect();
    bounded(10, "the slow requests reach the fake", async {
        while fake
            .api_requests()
            .iter()
            .filter(|r| r.path == "/slow/1500")
            .count()
            < 6
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let during = workers_of(pid);
    for ((task, was), (_, now)) in before.iter().zip(&during) {
        assert!(
            now > was,
            "worker {task} served nothing: {before:?} -> {during:?}"
        );
    }

    // SIGTERM with requests in flight on every worker: all of them finish.
    signal(&child, "TERM");
    for request in requests {
        let reply = bounded(20, "an in-flight request", request)
            .await
            .unwrap()
            .expect("an answer, not a dropped connection");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let status = bounded(20, "the proxy to exit", child.wait())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    fake.shutdown();
}

#[tokio::test]
async fn zero_workers_serve_on_the_main_runtime() {
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", dead_port());
    let child = serve(dir.path(), &fake.url(), &addr, "0");
    wait_healthy(&addr).await;
    assert!(workers_of(child.id().unwrap()).is_empty());
    let reply = try_get(&addr, "/slow/10").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    fake.shutdown();
}

#[tokio::test]
async fn a_reload_to_another_upstream_leaves_the_workers_old_connections() {
    let old = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let new = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", dead_port());
    // One worker: the request after the reload meets the kept connection.
    let child = serve(dir.path(), &old.url(), &addr, "1");
    wait_healthy(&addr).await;
    assert_eq!(
        try_get(&addr, "/slow/1").await.unwrap().status,
        StatusCode::OK
    );

    write_config(dir.path(), &new.url(), &addr);
    // The watcher sees the edit; SIGHUP makes sure.
    signal(&child, "HUP");
    wait_for_reload(&addr, "ok").await;
    try_get(&addr, "/slow/2").await.unwrap();
    let seen = |fake: &atomgit_fake::FakeAtomGit, path: &str| {
        fake.api_requests().iter().any(|r| r.path == path)
    };
    assert!(
        seen(&new, "/slow/2"),
        "the new upstream did not get the request"
    );
    assert!(
        !seen(&old, "/slow/2"),
        "the old upstream's connection was reused"
    );
    drop(child);
    old.shutdown();
    new.shutdown();
}

/// `ATOMGIT_PROXY_HTTP1_LANE=off` serves every connection through hyper; the
/// startup log says which path runs, and both answer the same way (a
/// pipelined pair, HTTP/1.0, and a request with a body on one connection).
#[tokio::test]
async fn the_fast_path_can_be_turned_off_and_the_log_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = start_fake(&[(14, "yanqianyu")], Duration::from_secs(3600)).await;
    for (setting, expected) in [("off", false), ("on", true)] {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", dead_port());
        let config = write_config(dir.path(), &fake.url(), &addr);
        let child = process::serve_logged_with_env(&config, &[(LANE, setting)]);
        wait_healthy(&addr).await;
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let wire = "GET /slow/1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
                    POST /slow/2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi\
                    GET /slow/3 HTTP/1.0\r\nHost: localhost\r\n\r\n";
        conn.write_all(wire.as_bytes()).await.unwrap();
        let mut answers = String::new();
        // HTTP/1.0 without keep-alive: the proxy closes after the third answer.
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answers))
            .await
            .expect("all three answers, then the close")
            .unwrap();
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
        assert_eq!(answers.matches("HTTP/1.0 200 OK").count(), 1, "{answers}");
        signal(&child, "TERM");
        let (status, log) = process::exit_and_stderr(child).await;
        assert!(status.success(), "{log}");
        let serving = log
            .lines()
            .find(|l| l.contains("\"serving\""))
            .expect("a serving line");
        assert!(
            serving.contains(&format!("\"http1_fast_path\":{expected}")),
            "{setting}: {serving}"
        );
    }
    fake.shutdown();
}

const LANE: &str = atomgit_proxy::server::LANE_ENV;
