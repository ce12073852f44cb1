//! The unclip-clip binary: flags, logging, bind, serve until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use unclip_clip::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    unclip_model_server::logging::init_tracing();
    let config = Config::parse();
    tracing::info!(?config, "starting unclip-clip");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    unclip_clip::run(config, listener, unclip_model_server::shutdown_signal()).await
}
