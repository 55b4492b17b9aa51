//! A real `redis-server` for the fleet tests: on a free loopback port, with
//! its own temporary folder, killable and restartable on the same port.
//!
//! It keeps nothing on disk by itself (`--save ""`, no AOF); [`RedisServer::kill`]
//! can `SAVE` first, so a restart comes back with the data, as a Redis with
//! persistence does after a crash.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's package puts it here; `.ci/run` installs it when missing.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub async fn start() -> RedisServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("an address").port()
        };
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a folder for redis"),
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn spawn(&mut self) {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dbfilename", "dump.rdb"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_SERVER} ({e}); install redis-server"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain connection for the test's own looks into Redis.
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Kills the server with SIGKILL; with `save`, it writes its data to
    /// disk first, so [`RedisServer::restart`] brings it back.
    pub async fn kill(&mut self, save: bool) {
        if save {
            let mut c = self.connection().await.expect("connect to redis");
            let _: () = redis::cmd("SAVE")
                .query_async(&mut c)
                .await
                .expect("redis SAVE");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and folder.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// Every key and its value(s), as raw bytes: strings whole, hashes as
    /// field and value pairs.
    pub async fn dump(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut c = self.connection().await.expect("connect to redis");
        let mut out = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..10_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .expect("SCAN");
            for key in keys {
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .expect("TYPE");
                let values: Vec<Vec<u8>> = match kind.as_str() {
                    "string" => vec![
                        redis::cmd("GET")
                            .arg(&key)
                            .query_async::<Option<Vec<u8>>>(&mut c)
                            .await
                            .expect("GET")
                            .unwrap_or_default(),
                    ],
                    "hash" => redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .expect("HGETALL"),
                    // Gone since SCAN saw it (a lock released, a TTL run out).
                    "none" => continue,
                    other => panic!("unexpected {other} at {key}"),
                };
                out.push((key, values));
            }
            if next == 0 {
                return out;
            }
            cursor = next;
        }
        panic!("SCAN did not finish");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
