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
    /// Copy grants into the configured store, or list them.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
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
        /// Wait (up to the link's life) until the login is done and the
        /// grant stored; exit 1 if the link expires first.
        #[arg(long)]
        wait: bool,
    },
    /// Exit 0 if a running proxy's /_proxy/healthz answers 200 (for Docker's
    /// HEALTHCHECK): asks the first listener of the config, or the URL.
    Healthcheck {
        /// The config whose first listener is asked. `--url` wins over it
        /// (so an image that sets ATOMGIT_PROXY_CONFIG can still probe a URL).
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: Option<PathBuf>,
        /// Base URL of the proxy, e.g. http://127.0.0.1:8080 (healthz is asked),
        /// or a local endpoint such as http://127.0.0.1:8080/_proxy/readyz
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the grants of a JSON grant file into the configured store (a
    /// newer grant there is never overwritten; running it again changes nothing).
    Import {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
        /// The grant file to copy from (`store.path` of a file-store config).
        grants_json: PathBuf,
    },
    /// Show each user's grant state and expiry (no secret).
    List {
        #[arg(short, long, env = "ATOMGIT_PROXY_CONFIG")]
        config: PathBuf,
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
    // Colour only for a person at a terminal who did not opt out
    // (https://no-color.org): a log file or collector gets plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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
        Command::Login {
            config,
            user,
            app,
            wait,
        } => login(config, &user, app.as_deref(), wait).await,
        Command::Healthcheck { config, url } => Ok(healthcheck(config, url)),
        Command::Store { command } => store(command).await,
    }
}

fn healthcheck(config: Option<PathBuf>, url: Option<String>) -> ExitCode {
    use atomgit_proxy::ops::healthcheck as hc;
    let target = match (config, url) {
        (_, Some(url)) => hc::target_from_url(&url),
        (Some(config), None) => hc::target_from_config(&config),
        (None, None) => {
            hc::target_from_url(&format!("http://{}", atomgit_proxy::config::DEFAULT_LISTEN))
        }
    };
    match target.and_then(|t| hc::probe(&t)) {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn store(command: StoreCommand) -> anyhow::Result<ExitCode> {
    use atomgit_proxy::store;
    let path = match &command {
        StoreCommand::Import { config, .. } | StoreCommand::List { config } => config.clone(),
    };
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(target) = store::open(&config, None).map_err(anyhow::Error::msg)? else {
        bail!("{} has no `store:`", path.display());
    };
    match command {
        StoreCommand::Import { grants_json, .. } => {
            let done = store::cli::import(&target, &grants_json).await?;
            println!(
                "imported {} grant(s) into the {} store; kept {} newer or equal one(s) there",
                done.written.len(),
                target.backend(),
                done.kept.len()
            );
            for user in &done.written {
                println!("  imported: {user}");
            }
            for user in &done.kept {
                println!("  kept:     {user}");
            }
        }
        StoreCommand::List { .. } => print!("{}", store::cli::list(&target).await?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn login(
    path: PathBuf,
    user: &str,
    app: Option<&str>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(oauth), true) = (
        config.oauth.as_ref(),
        config.store_path.is_some() || config.store_redis.is_some(),
    ) else {
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
    let started_ms = atomgit_proxy::credentials::grants::now_ms();
    let key = atomgit_proxy::store::link_key_for(&config)
        .context("reading or creating the login-link key")?;
    let link = login_link::link_with_key(&oauth.redirect_uri, &key, user, app.as_deref());
    println!("{link}");
    eprintln!("Open this link in a browser within 10 minutes to log in as {user}; it works once.");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("Waiting for the login to finish...");
    let Some(store) = atomgit_proxy::store::open(&config, None).map_err(anyhow::Error::msg)? else {
        bail!("{} has no `store:`", path.display());
    };
    let waited = atomgit_proxy::ops::login_wait::wait_for_grant(
        &*store,
        user,
        started_ms,
        login_link::LINK_LIFETIME,
    )
    .await;
    match waited {
        Some(grant) => {
            let until = chrono::DateTime::from_timestamp_millis(grant.access_expires_at_ms as i64)
                .map_or_else(String::new, |t| {
                    format!("; its token is good until {}", t.to_rfc3339())
                });
            println!("{user} is logged in: the grant is stored{until}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("the link expired before {user} logged in; run the command again");
            Ok(ExitCode::FAILURE)
        }
    }
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
        tracing::info!(
            listen = %addr,
            http1_fast_path = server::http1_fast_path(),
            "serving"
        );
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
