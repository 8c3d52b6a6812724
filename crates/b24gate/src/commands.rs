use std::fmt;

use engine::{Config, ConfigError, Secrets};
use store::{Keyring, OpenOptions, Store};

use crate::cli::{Args, Command, EventsAction, JobsAction};
use crate::ops;

/// A command's failure, with the exit status it maps to: 2 for a bad
/// configuration (nothing was written), 1 for everything else.
#[derive(Debug)]
pub enum CliError {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            CliError::Other(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Config(e) => write!(f, "{e}"),
            CliError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Other(e)
    }
}

impl From<store::StoreError> for CliError {
    fn from(e: store::StoreError) -> Self {
        CliError::Other(e.into())
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("B24GATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Reads the file named by `--config` (or nothing) and the environment.
fn load_config(args: &Args) -> Result<(Config, Secrets), CliError> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            CliError::Config(ConfigError {
                key: "--config".into(),
                message: format!("cannot read {}: {e}", path.display()),
            })
        })?,
        None => String::new(),
    };
    Config::load(&text, std::env::vars()).map_err(CliError::Config)
}

/// The configured keyring, required by commands that read tokens.
fn required_keyring(secrets: &Secrets, command: &str) -> Result<Keyring, CliError> {
    match &secrets.master_key {
        None => Err(CliError::Config(ConfigError {
            key: "B24GATE_MASTER_KEY".into(),
            message: format!("required by {command}: it unseals the stored tokens"),
        })),
        Some(_) => keyring(secrets),
    }
}

async fn open_store(config: &Config, keys: Keyring) -> Result<Store, CliError> {
    let store = Store::open(&config.server.database_url, keys, &OpenOptions::default()).await?;
    if store.pending_migrations().await? > 0 {
        return Err(CliError::Other(anyhow::anyhow!(
            "the database has pending migrations: run `b24gate migrate` first"
        )));
    }
    Ok(store)
}

/// The keyring for commands that touch no secret (migrate): a throwaway key
/// when none is configured.
fn keyring(secrets: &Secrets) -> Result<Keyring, CliError> {
    match &secrets.master_key {
        Some(k) => Keyring::from_hex(k).map_err(|e| {
            CliError::Config(ConfigError {
                key: "B24GATE_MASTER_KEY".into(),
                message: e.to_string(),
            })
        }),
        None => Ok(Keyring::generate().map_err(anyhow::Error::from)?.0),
    }
}

pub async fn run(args: Args) -> Result<(), CliError> {
    // The demo brings its own configuration.
    if let Command::Demo { json } = args.command {
        let report = crate::demo::run().await?;
        if json {
            println!(
                "{}",
                serde_json::to_string(&report).map_err(anyhow::Error::from)?
            );
        } else {
            print!("{}", crate::demo::render(&report));
        }
        return if report.ok {
            Ok(())
        } else {
            Err(CliError::Other(anyhow::anyhow!(
                "the demo found failing stages"
            )))
        };
    }
    // `call --webhook` needs neither configuration nor database.
    if let Command::Call {
        webhook: Some(url),
        all,
        method,
        params,
        allow_http,
        ..
    } = &args.command
    {
        return ops::call(
            None,
            Some(url),
            None,
            *all,
            *allow_http,
            method,
            params.as_deref(),
        )
        .await
        .map_err(CliError::Other);
    }
    let (config, secrets) = load_config(&args)?;
    let config = std::sync::Arc::new(config);
    match args.command {
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Serve => serve((*config).clone(), secrets).await,
        Command::Call {
            portal,
            all,
            method,
            params,
            ..
        } => {
            let store = open_store(&config, required_keyring(&secrets, "call --portal")?).await?;
            let o = ops::Ops::new(config.clone(), &secrets, store)?;
            ops::call(
                Some(&o),
                None,
                portal.as_deref(),
                all,
                false,
                &method,
                params.as_deref(),
            )
            .await?;
            Ok(())
        }
        Command::Portals { json } => {
            let store = open_store(&config, keyring(&secrets)?).await?;
            Ok(ops::portals(&store, json).await?)
        }
        Command::Bindings {
            portal,
            manifest,
            json,
            markdown,
        } => {
            let store = if manifest {
                None
            } else {
                Some(open_store(&config, keyring(&secrets)?).await?)
            };
            Ok(ops::bindings(
                &config,
                store.as_ref(),
                portal.as_deref(),
                manifest,
                json,
                markdown,
            )
            .await?)
        }
        Command::Reconcile {
            portal,
            all,
            dry_run,
            json,
        } => {
            let store = open_store(&config, required_keyring(&secrets, "reconcile")?).await?;
            let o = ops::Ops::new(config.clone(), &secrets, store)?;
            Ok(ops::reconcile_cmd(&o, portal.as_deref(), all, dry_run, json).await?)
        }
        Command::Doctor { portal, fix, json } => {
            let store = open_store(&config, required_keyring(&secrets, "doctor")?).await?;
            let o = ops::Ops::new(config.clone(), &secrets, store)?;
            if ops::doctor(&o, portal.as_deref(), fix, json).await? {
                Ok(())
            } else {
                Err(CliError::Other(anyhow::anyhow!(
                    "the doctor found problems"
                )))
            }
        }
        Command::Audit {
            portal,
            since,
            json,
        } => {
            let store = open_store(&config, keyring(&secrets)?).await?;
            Ok(ops::audit(&store, portal.as_deref(), since.as_deref(), json).await?)
        }
        Command::Jobs { action } => {
            let store = open_store(&config, keyring(&secrets)?).await?;
            let now = engine::system_now()();
            match action {
                JobsAction::List {
                    state,
                    portal,
                    json,
                } => Ok(ops::jobs_list(&store, state.as_deref(), portal.as_deref(), json).await?),
                JobsAction::Retry { id } => {
                    if store.retry_job(id, now).await? {
                        println!("job {id} queued again");
                        Ok(())
                    } else {
                        Err(CliError::Other(anyhow::anyhow!(
                            "job {id} is not dead-lettered or cancelled"
                        )))
                    }
                }
                JobsAction::Discard { id } => {
                    if store.discard_job(id, "discarded by hand", now).await? {
                        println!("job {id} moved to the dead letter");
                        Ok(())
                    } else {
                        Err(CliError::Other(anyhow::anyhow!("job {id} is not waiting")))
                    }
                }
            }
        }
        Command::Events {
            action:
                EventsAction::Replay {
                    portal,
                    since,
                    json,
                },
        } => {
            let store = open_store(&config, keyring(&secrets)?).await?;
            Ok(ops::replay(&config, &store, &portal, &since, json).await?)
        }
        Command::Migrate { status, json } => {
            let store = Store::open(
                &config.server.database_url,
                keyring(&secrets)?,
                &OpenOptions::default(),
            )
            .await?;
            let (applied, pending) = if status {
                (0, store.pending_migrations().await?)
            } else {
                (store.migrate().await?, store.pending_migrations().await?)
            };
            store.close().await;
            let backend = store.backend().as_str();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"backend": backend, "applied": applied, "pending": pending})
                );
            } else if status {
                println!("{backend}: {pending} migration(s) pending");
            } else {
                println!("{backend}: {applied} migration(s) applied, {pending} pending");
            }
            Ok(())
        }
        Command::Config { json } => {
            let view = serde_json::json!({
                "server": {
                    "listen": config.server.listen,
                    "public_url": config.server.public_url,
                    "database_url": redact_url(&config.server.database_url),
                    "allow_insecure_http": config.server.allow_insecure_http,
                    "workers": config.server.workers,
                },
                "app": {
                    "client_id": config.app.client_id,
                    "version": config.app.version,
                    "scopes": config.app.scopes,
                    "installer": config.app.installer,
                    "oauth_url": config.app.oauth_url,
                    "allowed_domains": config.app.allowed_domains,
                },
                "install_url": config.install_url(),
                "events_url": config.events_url(),
                "bindings": config.bindings.len(),
                "placements": config.placements.len(),
                "targets": config.targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "secrets": format!("{secrets:?}"),
            });
            if json {
                println!("{view}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).map_err(anyhow::Error::from)?
                );
            }
            Ok(())
        }
    }
}

/// `b24gate serve`: migrate, start the engine, serve until SIGINT/SIGTERM,
/// then drain.
async fn serve(config: Config, secrets: Secrets) -> Result<(), CliError> {
    let Some(master) = &secrets.master_key else {
        return Err(CliError::Config(ConfigError {
            key: "B24GATE_MASTER_KEY".into(),
            message: "required by serve: 64 hex characters that seal tokens at rest".into(),
        }));
    };
    let keys = Keyring::from_hex(master).map_err(|e| {
        CliError::Config(ConfigError {
            key: "B24GATE_MASTER_KEY".into(),
            message: e.to_string(),
        })
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    let store_opts = OpenOptions {
        portal_cache_ttl: config.server.portal_cache_ttl,
        ..OpenOptions::default()
    };
    let store = Store::open(&config.server.database_url, keys, &store_opts).await?;
    store.migrate().await?;
    let mut opts = crate::gateway::GatewayOptions::default();
    opts.engine.runner.workers = config.server.workers as usize;
    opts.engine.runner.lease = config.server.job_lease;
    let gateway = crate::gateway::Gateway::start(
        std::sync::Arc::new(config),
        &secrets,
        store.clone(),
        listener,
        opts,
    )
    .await?;
    tracing::info!(url = %gateway.url, "b24gate serving");
    eprintln!(
        "b24gate: serving on {}",
        gateway.url.trim_start_matches("http://")
    );
    shutdown_signal().await;
    gateway.shutdown().await;
    store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
