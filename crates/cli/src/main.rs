//! The `unclip` binary: parse the command line and run it (everything else is in the library).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    unclip_cli::main(unclip_cli::Cli::parse()).await
}
