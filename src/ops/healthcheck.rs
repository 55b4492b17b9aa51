//! `atomgit-proxy healthcheck`: asks a running proxy's `/_proxy/healthz`,
//! for Docker's `HEALTHCHECK` in an image without curl.
//!
//! Hand-written HTTP/1.1 over a blocking socket: one request, one status
//! line, a short timeout. The probe must not need the config's secrets (the
//! health check's environment may lack them), so from a config file only
//! `listen:` is read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connect, write and read: each bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(3);

const HEALTHZ: &str = "/_proxy/healthz";

/// Where the probe goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { addr: String, path: String },
    Unix(PathBuf),
}

/// The first listener of the config at `path` (the default listener when
/// it names none). A wildcard listener is asked on loopback.
pub fn target_from_config(path: &Path) -> Result<Target, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|_| {
        format!(
            "{} is not valid YAML; run `atomgit-proxy check`",
            path.display()
        )
    })?;
    let first = match doc.get("listen") {
        None => crate::config::DEFAULT_LISTEN.to_owned(),
        Some(list) => list
            .get(0)
            .and_then(serde_yaml::Value::as_str)
            .ok_or_else(|| "listen: expected a list of addresses".to_owned())?
            .to_owned(),
    };
    if let Some(socket) = first.strip_prefix("unix:") {
        let base = path.parent().unwrap_or(Path::new("."));
        return Ok(Target::Unix(base.join(socket)));
    }
    let addr: SocketAddr = first
        .parse()
        .map_err(|_| "listen[0]: expected host:port or unix:/path".to_owned())?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(Target::Tcp {
        addr: SocketAddr::new(ip, addr.port()).to_string(),
        path: HEALTHZ.into(),
    })
}

/// `http://host:port[/prefix]`: healthz under it, unless the URL names a
/// local endpoint itself (`.../_proxy/readyz` for a readiness probe).
pub fn target_from_url(url: &str) -> Result<Target, String> {
    let url = url::Url::parse(url).map_err(|e| format!("--url: {e}"))?;
    if url.scheme() != "http" {
        return Err("--url: only http:// (the proxy's listeners speak plain HTTP)".into());
    }
    let host = url.host_str().ok_or("--url: no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let base = url.path().trim_end_matches('/');
    let path = if base.contains("/_proxy/") {
        base.to_owned()
    } else {
        format!("{base}{HEALTHZ}")
    };
    Ok(Target::Tcp {
        addr: format!("{host}:{port}"),
        path,
    })
}

/// Whether the proxy answered 200; the error says what went wrong.
pub fn probe(target: &Target) -> Result<(), String> {
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let status_line = match target {
        Target::Tcp { addr, path } => {
            let sock = addr
                .to_socket_addrs()
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr}: no address"))?;
            let stream = TcpStream::connect_timeout(&sock, TIMEOUT)
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            exchange(stream, &request(path))?
        }
        #[cfg(unix)]
        Target::Unix(socket) => {
            let stream = std::os::unix::net::UnixStream::connect(socket)
                .map_err(|e| format!("cannot connect to unix:{}: {e}", socket.display()))?;
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            stream
                .set_write_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            read_status(stream, &request(HEALTHZ))?
        }
        #[cfg(not(unix))]
        Target::Unix(_) => return Err("unix sockets need a unix system".into()),
    };
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("healthz answered {code}")),
        None => Err("healthz answered something that is not HTTP".into()),
    }
}

fn exchange(stream: TcpStream, request: &str) -> Result<String, String> {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    read_status(stream, request)
}

/// Sends `request` and reads the status line (at most 1 KiB).
fn read_status(mut stream: impl Read + Write, request: &str) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("no answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_healthz_appended_once() {
        let t = |u: &str| match target_from_url(u).unwrap() {
            Target::Tcp { addr, path } => format!("{addr}{path}"),
            Target::Unix(_) => unreachable!(),
        };
        assert_eq!(t("http://127.0.0.1:8080"), "127.0.0.1:8080/_proxy/healthz");
        assert_eq!(
            t("http://localhost:9/_proxy/healthz"),
            "localhost:9/_proxy/healthz"
        );
        assert_eq!(t("http://h:1/prefix/"), "h:1/prefix/_proxy/healthz");
        assert_eq!(t("http://h:1/_proxy/readyz"), "h:1/_proxy/readyz");
        assert!(target_from_url("https://h").is_err());
    }
}
