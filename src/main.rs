//! The `valet` binary: parses the command line and wires the library
//! together. See `valet --help`.
#![forbid(unsafe_code)]

use clap::Parser as _;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use valet::app::{App, StartError};
use valet::cli::{AuditCommand, Cli, Command, ConfigCommand, EXIT_USAGE};
use valet::config::Config;
use valet::server::{self, Listeners};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config } => serve(config).await,
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
        Command::Admin(args) => valet::cli::admin::run(args).await,
        Command::Audit(AuditCommand::Verify { file }) => valet::cli::audit::verify(&file),
    };
    std::process::exit(code);
}

async fn serve(config_path: Option<PathBuf>) -> i32 {
    init_logging();
    let config = match config_path {
        Some(path) => match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return EXIT_USAGE;
            }
        },
        None => Config::default(),
    };
    let app = match App::open(&config).await {
        Ok(app) => Arc::new(app),
        Err(e @ StartError::Config(_)) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("valet: cannot start: {e}");
            return 1;
        }
    };
    if let Some(path) = &app.bootstrap_key {
        eprintln!(
            "first start: an admin API key was written to {} (mode 0600)",
            path.display()
        );
    }
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("valet: {e}");
            return 1;
        }
    };
    tracing::info!(
        gateway = %config.server.listen,
        admin = %config.server.admin_listen,
        vendors = config.vendors.len(),
        "valet serving"
    );
    match server::serve(app, listeners, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("valet stopped");
            0
        }
        Err(e) => {
            eprintln!("valet: server failed: {e}");
            1
        }
    }
}

/// JSON logs on stdout, filtered by `RUST_LOG` (default `info`). The HTTP,
/// TLS, gRPC and AWS SDK libraries are capped at `info` whatever `RUST_LOG`
/// says: their debug and trace output can print request URLs, headers and
/// bodies, which is where credentials (and a master key read from Secrets
/// Manager) travel.
fn init_logging() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = [
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
        "tokio_rustls",
        "hyper_rustls",
        "tonic",
        "tower",
        "aws_config",
        "aws_runtime",
        "aws_sdk_secretsmanager",
        "aws_sigv4",
        "aws_smithy_http_client",
        "aws_smithy_runtime",
        "aws_smithy_runtime_api",
        "aws_smithy_types",
    ]
    .into_iter()
    .fold(Targets::new().with_default(Level::TRACE), |t, target| {
        t.with_target(target, Level::INFO)
    });
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_filter(env.and(cap));
    tracing_subscriber::registry().with(layer).init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight calls");
}
