//! The `atomgit-proxy` binary: command line, logging, and the process's
//! lifecycle. Everything else lives in the library.

use anyhow::{Context as _, bail};
use atomgit_proxy::config::Config;
use atomgit_proxy::credentials::login_link;
use atomgit_proxy::routes::RouteCredential;
use atomgit_proxy::state::{Shared, Snapshot};
use atomgit_proxy::{app, reload, server};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "atomgit-proxy",
    version,
    about = "Local HTTP proxy that injects fresh AtomGit app and user tokens"
)]
struct Cli {
    /// Log format (default: text on a terminal, json otherwise). Logs go to stderr;
    /// the level is set with RUST_LOG (default info).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
    },
    /// Load and fully validate a config; print a summary or every problem.
    Check {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
    },
    /// Zero-setup demo: an embedded fake AtomGit and the proxy in front of it.
    #[cfg(feature = "dev")]
    Dev {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Print a fresh token for a route's credential (for scripts).
    Token {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
        /// Route name.
        #[arg(long)]
        route: String,
        /// Owner to act for on an `installation: auto` route.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Print a one-time login link (valid 10 minutes) that binds USER's grant.
    Login {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
        /// The user name routes refer to with `user: NAME`.
        user: String,
        /// The app (under `apps:`) to log in with; needed when there are
        /// several and the user's routes do not name just one.
        #[arg(long)]
        app: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(check(&config)),
        Command::Serve { config } => serve(config).await,
        #[cfg(feature = "dev")]
        Command::Dev { listen } => atomgit_proxy::dev::run(listen)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Token {
            config,
            route,
            owner,
        } => token(config, &route, owner.as_deref()).await,
        Command::Login { config, user, app } => login(config, &user, app.as_deref()),
    }
}

fn login(path: PathBuf, user: &str, app: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(oauth), Some(store)) = (config.oauth.as_ref(), config.store_path.as_ref()) else {
        bail!(
            "user logins need `oauth:` (with redirect_uri) and `store:` in {}",
            path.display()
        );
    };
    let used = config
        .routes
        .iter()
        .any(|r| matches!(&r.credential, RouteCredential::User(u) if &**u == user));
    if !used {
        eprintln!(
            "note: no route has `user: {user}`; the grant will be stored but unused until one does"
        );
    }
    let app = login_app(&config, user, app)?;
    let link = login_link::link_for_app(&oauth.redirect_uri, store, user, app.as_deref())?;
    println!("{link}");
    eprintln!("Open this link in a browser within 10 minutes to log in as {user}; it works once.");
    Ok(ExitCode::SUCCESS)
}

/// The app a login link names: `--app` (which must exist), else none with
/// one app, else the one app the user's routes use. `None`: the link names
/// no app (the proxy takes the user's route's).
fn login_app(config: &Config, user: &str, app: Option<&str>) -> anyhow::Result<Option<String>> {
    let names: Vec<&str> = config.apps.iter().map(|a| &*a.name).collect();
    if let Some(app) = app {
        if config.app_named(app).is_none() {
            bail!("no app named `{app}` (apps: {})", names.join(", "));
        }
        return Ok((names.len() > 1).then(|| app.to_owned()));
    }
    if names.len() <= 1 {
        return Ok(None);
    }
    let mut used: Vec<&str> = config
        .routes
        .iter()
        .filter(|r| matches!(&r.credential, RouteCredential::User(u) if &**u == user))
        .map(|r| &*r.app)
        .collect();
    used.sort_unstable();
    used.dedup();
    match used[..] {
        [one] => Ok(Some(one.to_owned())),
        _ => bail!(
            "there are several apps: pass --app NAME to say which one `{user}` logs in with (apps: {})",
            names.join(", ")
        ),
    }
}

/// Validates the config and everything built from it: the upstream's TLS
/// setup and the grant store (a corrupt store would stop `serve`).
fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Warnings do not fail the check: the config works, it is just exposed.
    for warning in config.file_warnings() {
        eprintln!("warning: {warning}");
    }
    let summary = config.summary();
    match Snapshot::build(config, None) {
        Ok(_) => {
            println!("{}: OK\n{summary}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<ExitCode> {
    // First of all: a SIGTERM sent while we start must drain, not kill.
    let signals = app::Signals::install();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for warning in config.file_warnings() {
        tracing::warn!("{warning}");
    }
    if config.allow_unauthenticated && config.clients.is_empty() {
        tracing::warn!(
            "allow_unauthenticated is set and no clients are configured: anyone who can reach the listeners can use the app's credentials"
        );
    }
    // The runtime (grant store included) is built before binding, so a
    // corrupt store stops the start with its own message and exit code 2.
    let snapshot = match Snapshot::build(config, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let listeners = server::bind(&snapshot.config.listen, snapshot.config.unix_socket_mode)?;
    let running = app::start_snapshot(snapshot, listeners);
    for addr in &running.addrs {
        tracing::info!(listen = %addr, "serving");
    }
    // Without a watcher SIGHUP still reloads; say so rather than refuse to run.
    let _watcher = match reload::watch(running.shared().clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("cannot watch the config for changes ({e}); reload with SIGHUP");
            None
        }
    };
    signals.run(running.shared().clone()).await;
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn token(path: PathBuf, route_name: &str, owner: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(route) = config.routes.get(route_name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| &*r.name).collect();
        bail!(
            "no route named `{route_name}` (routes: {})",
            names.join(", ")
        );
    };
    let credential = route.credential.clone();
    let path_for_owner = match (&credential, owner) {
        (_, Some(owner)) => format!("/orgs/{owner}"),
        (
            RouteCredential::Installation(atomgit_proxy::routes::InstallationSelector::Auto),
            None,
        ) => {
            bail!("route `{route_name}` picks the installation from the path: pass --owner NAME")
        }
        _ => "/".to_owned(),
    };
    let shared = Shared::new(Snapshot::build(config, None).map_err(anyhow::Error::msg)?);
    let snap = shared.snapshot.load_full();
    let route = snap
        .config
        .routes
        .get(route_name)
        .context("the route is in the config just loaded")?;
    let token = shared
        .credentials
        .token(&snap.context_for(route), &credential, &path_for_owner)
        .await
        .with_context(|| format!("route `{route_name}`"))?;
    println!("{}", token.value());
    Ok(ExitCode::SUCCESS)
}
