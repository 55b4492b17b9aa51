//! The files in `deploy/` work as shipped: every Kubernetes manifest is
//! valid against the Kubernetes schemas (the `kubernetes-validate` Python
//! package, which `.ci/run` installs), every proxy config in `deploy/` —
//! files and the ConfigMaps inside manifests — passes `atomgit-proxy
//! check` with dummy secrets in place, the systemd unit verifies, and the
//! Dockerfile pins its bases and checks its health with the binary.

mod common;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_atomgit-proxy");
const INSTALL: &str = "install it with `pip install kubernetes-validate` (.ci/run does)";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn manifests() -> Vec<PathBuf> {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate` on PATH, else the module through python3.
fn validator() -> Command {
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join("kubernetes-validate").is_file());
    if on_path {
        Command::new("kubernetes-validate")
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "kubernetes_validate"]);
        c
    }
}

fn validate(file: &Path) -> std::process::Output {
    validator()
        .args(["--strict", "--no-warn"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubernetes-validate ({e}); {INSTALL}"))
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    // The validator must be able to fail: a broken Deployment is refused.
    let dir = tempfile::tempdir().expect("a temp dir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\nspec:\n  replicas: two\n",
    )
    .expect("write");
    let out = validate(&broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "kubernetes-validate is missing; {INSTALL}"
    );
    assert!(!out.status.success(), "a broken manifest passed");

    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    for wanted in ["sidecar.yaml", "fleet.yaml"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing: {names:?}"
        );
    }
    for file in files {
        let out = validate(&file);
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[derive(Deserialize)]
struct Resource {
    kind: String,
    #[serde(default)]
    metadata: serde_yaml::Value,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

/// Every proxy config in the manifests: (where, text).
fn embedded_configs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("read the manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let resource =
                Resource::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if resource.kind != "ConfigMap" {
                continue;
            }
            let name = resource.metadata["name"].as_str().unwrap_or("?").to_owned();
            for (key, value) in resource.data {
                if key.ends_with(".yaml") && value.contains("\napp:") {
                    out.push((format!("{} configmap/{name} {key}", file.display()), value));
                }
            }
        }
    }
    out
}

/// Runs `check` on `config` written at `dir/config/config.yaml`, with dummy
/// secrets where the deployments mount them (`dir/secrets/`) and in the
/// environment.
fn check(config: &str, dir: &Path) -> std::process::Output {
    std::fs::create_dir_all(dir.join("config")).expect("mkdir");
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    let key = dir.join("secrets/app.pem");
    std::fs::write(&key, common::private_key_pem()).expect("write the key");
    std::fs::write(
        dir.join("secrets/store.key"),
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )
    .expect("write the store key");
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["app.pem", "store.key"] {
            let p = dir.join("secrets").join(f);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
    let path = dir.join("config/config.yaml");
    std::fs::write(&path, config).expect("write the config");
    Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("ATOMGIT_PROXY_CONFIG")
        .env("CI_PROXY_KEY", "dummy-client-key-0123456789")
        .env("ATOMGIT_PROXY_REDIS_URL", "redis://:pw@127.0.0.1:6379/0")
        .output()
        .expect("run check")
}

fn assert_passes(what: &str, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} fails check:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_config_in_the_manifests_passes_check() {
    let configs = embedded_configs();
    assert!(configs.len() >= 2, "sidecar and fleet configs: {configs:?}");
    for (what, text) in configs {
        let dir = tempfile::tempdir().expect("a temp dir");
        // Absolute store paths point at the pod's volume: here, the temp dir.
        let text = text.replace(
            "/var/lib/atomgit-proxy/",
            &format!("{}/", dir.path().display()),
        );
        assert_passes(&what, &check(&text, dir.path()));
    }
}

#[test]
fn the_docker_and_systemd_configs_pass_check() {
    // deploy/config.yaml is mounted whole at /etc/atomgit-proxy: app.pem beside it.
    let dir = tempfile::tempdir().expect("a temp dir");
    let text = std::fs::read_to_string(deploy().join("config.yaml")).expect("deploy/config.yaml");
    let text = text.replace("{ file: app.pem }", "{ file: ../secrets/app.pem }");
    assert_passes("deploy/config.yaml", &check(&text, dir.path()));

    // The unit's credential folder and state folder, mapped to the temp dir.
    let dir = tempfile::tempdir().expect("a temp dir");
    let text = std::fs::read_to_string(deploy().join("systemd/config.yaml"))
        .expect("deploy/systemd/config.yaml")
        .replace(
            "/run/credentials/atomgit-proxy.service/",
            &format!("{}/secrets/", dir.path().display()),
        )
        .replace(
            "/var/lib/atomgit-proxy/",
            &format!("{}/", dir.path().display()),
        );
    assert_passes("deploy/systemd/config.yaml", &check(&text, dir.path()));
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit =
        std::fs::read_to_string(deploy().join("systemd/atomgit-proxy.service")).expect("the unit");
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=atomgit-proxy",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "TimeoutStopSec=35",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    // Where systemd is installed, its own checker reads the unit (with the
    // binary path pointed at the one just built).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("atomgit-proxy.service");
        std::fs::write(&path, unit.replace("/usr/local/bin/atomgit-proxy", BIN)).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("atomgit-proxy.service:"),
            "systemd-analyze verify:\n{stderr}"
        );
    }
}

#[test]
fn the_dockerfile_pins_its_bases_and_checks_health_with_the_binary() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("the Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert!(froms.len() >= 2, "{froms:?}");
    for from in froms {
        let image = from.split_whitespace().next().unwrap_or_default();
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or_default();
        // An exact version (digits with dots, or a dated release), or a digest.
        let exact = image.contains("@sha256:")
            || tag
                .split('-')
                .next()
                .is_some_and(|v| v.matches('.').count() == 2)
            || tag
                .split('-')
                .any(|part| part.len() == 8 && part.bytes().all(|b| b.is_ascii_digit()));
        assert!(exact, "{image} is not pinned to an exact version");
    }
    let healthcheck = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        healthcheck.contains(r#"CMD ["atomgit-proxy", "healthcheck"]"#),
        "{healthcheck}"
    );
}
