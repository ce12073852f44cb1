//! The unclip-gateway binary: flags, logging, bind, serve until SIGTERM or Ctrl-C.

use anyhow::Context;
use unclip_gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    unclip_server::logging::init_tracing();
    let config = Config::from_env_and_args();
    tracing::info!(?config, "starting unclip-gateway");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    unclip_gateway::run(config, listener, unclip_server::shutdown_signal()).await
}
