//! The `valet` binary: parses the command line and wires the library
//! together. See `valet --help`.
#![forbid(unsafe_code)]

use clap::Parser as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use valet::app::{App, StartError, StartOptions};
use valet::cli::{AuditCommand, Cli, Command, ConfigCommand, EXIT_USAGE, Overrides};
use valet::config::{Config, Validated};
use valet::server::{self, Listeners};
use valet_telemetry::subscriber::CONSOLE;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Config(ConfigCommand::Check { config }) => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_USAGE
            }
        },
        Command::Admin(args) => valet::cli::admin::run(*args).await,
        Command::Status(connection) => valet::cli::admin::status(connection).await,
        Command::Audit(AuditCommand::Verify {
            file,
            anchor,
            log_id,
            config,
        }) => valet::cli::audit::verify(&file, anchor.as_deref(), log_id.as_deref(), config.as_deref()).await,
        Command::Completion { shell } => {
            valet::cli::completion(shell, &mut std::io::stdout());
            0
        }
        Command::Man => match valet::cli::man(&mut std::io::stdout()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("valet man: {e}");
                1
            }
        },
    };
    // Only main picks the exit code, once every command has returned and
    // dropped (so wiped) what it held.
    #[allow(clippy::disallowed_methods)]
    std::process::exit(code);
}

async fn serve(config_path: Option<PathBuf>, listen: Overrides) -> i32 {
    let config = match load(config_path.as_deref(), &listen) {
        Ok(c) => c,
        Err(e) => {
            console_error(&e.to_string());
            return EXIT_USAGE;
        }
    };
    let telemetry = match valet_telemetry::subscriber::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            console_error(&format!("valet: telemetry: {e}"));
            return EXIT_USAGE;
        }
    };
    let mut exit = Exit::default();
    let reloader = valet::reload::Reloader::new(config_path, listen, (*config).clone())
        .with_sampling(telemetry.sampling())
        .with_log_format(telemetry.log_format());
    let code = run(&config, reloader, &mut exit).await;
    // Flush queued spans and the last metrics push before `exit`, which runs
    // no destructors — within what is left of the drain and grace period.
    let within = exit.deadline.map_or(
        Duration::from_millis(config.server.shutdown_grace_ms),
        |deadline| deadline.saturating_duration_since(Instant::now()),
    );
    let metrics = exit.metrics.unwrap_or_default();
    let _ =
        tokio::task::spawn_blocking(move || valet_telemetry::subscriber::flush(telemetry, metrics, within))
            .await;
    code
}

/// The config file (or the embedded defaults) with the command line's
/// listener addresses put in, checked.
fn load(path: Option<&Path>, listen: &Overrides) -> Result<Validated, valet::config::ConfigError> {
    let mut config = match path {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    listen.apply(&mut config);
    match path {
        Some(path) => config.validate().map_err(|e| e.at(path)),
        None => config.validate(),
    }
}

/// What the exit needs from a run: the metrics to push a last time, and
/// when the drain and grace period that began at the signal are over.
#[derive(Default)]
struct Exit {
    metrics: Option<valet_telemetry::Metrics>,
    deadline: Option<Instant>,
}

/// A line for a person at a terminal, as JSON on stderr.
fn console_error(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!(target: CONSOLE, "{message}");
    } else {
        valet_telemetry::subscriber::console_error(message);
    }
}

async fn run(config: &Validated, reloader: valet::reload::Reloader, exit: &mut Exit) -> i32 {
    let options = match server::ServeOptions::from_config(&config.server) {
        Ok(options) => options,
        Err(e) => {
            console_error(&format!("valet: {e}"));
            return EXIT_USAGE;
        }
    };
    let hangups = match valet::reload::hangups() {
        Ok(signal) => signal,
        Err(e) => {
            console_error(&format!("valet: cannot handle SIGHUP: {e}"));
            return 1;
        }
    };
    let app = match App::start(config, &StartOptions::default()).await {
        Ok(app) => Arc::new(app),
        Err(e @ StartError::Config(_)) => {
            console_error(&e.to_string());
            return EXIT_USAGE;
        }
        Err(e) => {
            console_error(&format!("valet: cannot start: {e}"));
            return 1;
        }
    };
    exit.metrics = Some(app.metrics.clone());
    if let Some(path) = &app.bootstrap_key {
        tracing::warn!(
            target: CONSOLE,
            path = %path.display(),
            "first start: an admin API key was written to {} (mode 0600)",
            path.display()
        );
    }
    let reloads = tokio::spawn(valet::reload::on_sighup(app.clone(), reloader, hangups));
    let listeners = match Listeners::bind(config).await {
        Ok(l) => l,
        Err(e) => {
            console_error(&format!("valet: {e}"));
            return 1;
        }
    };
    tracing::info!(
        gateway = %config.server.listen,
        admin = %config.server.admin_listen,
        ops = %config.server.ops_listen,
        vendors = config.vendors.len(),
        version = valet::LONG_VERSION,
        traces_exported = config.telemetry.exports_traces(),
        "valet serving"
    );

    let signalled = Arc::new(std::sync::OnceLock::new());
    let served = server::serve(app, listeners, options, shutdown_signal(signalled.clone())).await;
    reloads.abort();
    exit.deadline = signalled.get().map(|at: &Instant| {
        *at + Duration::from_millis(config.server.drain_delay_ms)
            + Duration::from_millis(config.server.shutdown_grace_ms)
    });
    match served {
        Ok(()) => {
            tracing::info!("valet stopped");
            0
        }
        Err(e) => {
            console_error(&format!("valet: server failed: {e}"));
            1
        }
    }
}

async fn shutdown_signal(signalled: Arc<std::sync::OnceLock<Instant>>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = signalled.set(Instant::now());
    tracing::info!("shutting down: finishing in-flight calls");
}
