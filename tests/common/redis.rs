//! A real `redis-server` for the fleet tests: on a free loopback port, with
//! its own temporary folder, killable and restartable on the same port.
//!
//! It keeps nothing on disk by itself (`--save ""`, no AOF); [`RedisServer::kill`]
//! can `SAVE` first, so a restart comes back with the data, as a Redis with
//! persistence does after a crash.
//!
//! [`RedisServer::start_tls`] runs it with TLS only and a password, for
//! `rediss://` (issue 9).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's package puts it here; `.ci/run` installs it when missing.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// What a TLS-only server runs with: its PEM files and the password.
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub password: String,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(None).await
    }

    /// A server with TLS only (`--port 0`, no client certificates) and
    /// `--requirepass`; [`RedisServer::connection`] trusts `tls.ca_pem`.
    pub async fn start_tls(tls: Tls) -> RedisServer {
        RedisServer::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<Tls>) -> RedisServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("an address").port()
        };
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("a folder for redis"),
            child: None,
            tls,
        };
        if let Some(tls) = &server.tls {
            let dir = server.dir.path();
            std::fs::write(dir.join("server.crt"), &tls.cert_pem).expect("write server.crt");
            std::fs::write(dir.join("server.key"), &tls.key_pem).expect("write server.key");
            std::fs::write(dir.join("ca.crt"), &tls.ca_pem).expect("write ca.crt");
        }
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:PORT/0`; with TLS `rediss://:PASSWORD@localhost:PORT/0`
    /// (the name the certificate carries).
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(tls) => format!("rediss://:{}@localhost:{}/0", tls.password, self.port),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(REDIS_SERVER);
        if let Some(tls) = &self.tls {
            let dir = self.dir.path();
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"])
                .args(["--requirepass", &tls.password]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        let child = command
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
        let client = match &self.tls {
            None => redis::Client::open(self.url())?,
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.as_bytes().to_vec()),
                },
            )?,
        };
        client.get_multiplexed_async_connection().await
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
