//! The `valet` binary: parses the command line and wires the library
//! together. See `valet --help`.
#![forbid(unsafe_code)]

use clap::Parser as _;
use std::path::PathBuf;
use std::sync::Arc;
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
        Command::Admin(args) => valet::cli::admin::run(*args).await,
        Command::Audit(AuditCommand::Verify { file }) => valet::cli::audit::verify(&file),
    };
    std::process::exit(code);
}

async fn serve(config_path: Option<PathBuf>) -> i32 {
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
    let telemetry = match valet_telemetry::subscriber::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("valet: telemetry: {e}");
            return EXIT_USAGE;
        }
    };
    let code = run(&config).await;
    // Flush queued spans before `exit`, which runs no destructors.
    drop(telemetry);
    code
}

async fn run(config: &Config) -> i32 {
    let options = match server::ServeOptions::from_config(&config.server) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("valet: {e}");
            return EXIT_USAGE;
        }
    };
    let app = match App::open(config).await {
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
    let listeners = match Listeners::bind(config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("valet: {e}");
            return 1;
        }
    };
    tracing::info!(
        gateway = %config.server.listen,
        admin = %config.server.admin_listen,
        ops = %config.server.ops_listen,
        vendors = config.vendors.len(),
        traces_exported = config.telemetry.exports_traces(),
        "valet serving"
    );

    match server::serve(app, listeners, options, shutdown_signal()).await {
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight calls");
}
