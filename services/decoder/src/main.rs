//! The unclip-decoder binary: flags, logging, bind, serve until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use unclip_decoder::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    unclip_model_server::logging::init_tracing();
    let config = Config::parse();
    tracing::info!(?config, "starting unclip-decoder");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    unclip_decoder::run(config, listener, unclip_model_server::shutdown_signal()).await
}
