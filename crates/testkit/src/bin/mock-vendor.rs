//! A standalone mock vendor for trying Valet by hand: echoes every request
//! back as JSON, credential included — which Valet scrubs before the caller
//! sees it.

use clap::Parser;

/// Echoing mock vendor for local experiments with Valet.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on, on 127.0.0.1.
    #[arg(long, default_value_t = 18080)]
    port: u16,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-vendor: cannot listen on 127.0.0.1:{}: {e}", args.port);
            // A binary's main: nothing is left to drop but the runtime.
            #[allow(clippy::disallowed_methods)]
            std::process::exit(1);
        }
    };
    let vendor = valet_testkit::MockVendor::serve(listener, None).await;
    println!("mock vendor echoing on {}", vendor.base_url());
    let _ = tokio::signal::ctrl_c().await;
}
