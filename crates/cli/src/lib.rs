//! unclip-cli: the `unclip` command line, a gRPC client of the unCLIP gateway.
//!
//! | module | what |
//! |---|---|
//! | [`args`] | the flags and subcommands (clap) and the requests they make |
//! | [`commands`] | [`Call`]: read the inputs, call the streaming RPC, write the files |
//! | [`client`] | the gateway connection, deadlines, gRPC errors as `CODE: message` |
//! | [`progress`] | the progress bar fed by the gateway's `Progress` events |
//! | [`output`] | output file names, printed lines, the `info` and `stats` reports |
//! | [`stack`] | `--local` and `unclip stack`: a [`unclip_stack::LocalStack`] with the gateway |
//! | [`bench`] | `unclip bench`: a load test of Generate, as a table or JSON |
//! | [`keys`] | `unclip api-key new`: a random key and its `--api-keys` line |
//! | [`soak`] | `unclip soak`: mixed traffic against a local stack, memory and files watched |
//!
//! Every capability command reads its input files and checks its output folder before anything
//! starts, calls the gateway (one started with `--local`, or the one at `--gateway`), shows a
//! progress bar on stderr, writes the images (`--out` for one, `STEM-k.png` for several) and
//! prints one line per file and a summary on stdout.

pub mod args;
pub mod bench;
pub mod client;
pub mod commands;
pub mod keys;
pub mod output;
pub mod progress;
pub mod soak;
pub mod stack;

use std::process::ExitCode;

use unclip_stack::{LocalStack, RedisMode, StageReplicas};

pub use args::{Cli, Command, GlobalArgs};
pub use commands::Call;

/// The command was stopped by Ctrl-C or SIGTERM (exit status 130).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The whole program after parsing: logs warnings to stderr, runs the command, prints an error
/// as `error: ...` (no backtrace) and turns it into the exit status.
pub async fn main(cli: Cli) -> ExitCode {
    unclip_server::logging::init_cli_tracing();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line: `stack`, or one gateway call (around a local stack with
/// `--local`). Ctrl-C or SIGTERM cancels the call and stops the local stack.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    if let Command::Stack(args) = &command {
        return stack::run(&global, args).await;
    }
    if let Command::ApiKey(args::ApiKeyCommand::New(args)) = &command {
        return keys::print_new(args);
    }
    if let Command::Soak(args) = &command {
        return soak::run(&global, args).await;
    }
    // Inputs first: a missing file fails before any service starts.
    let call = Call::prepare(&command)?;
    let local = match &global.local {
        Some(model) => {
            let redis = if global.redis {
                RedisMode::IfInstalled
            } else {
                RedisMode::Off
            };
            let config = stack::config(&global, model, StageReplicas::default(), redis, vec![])?;
            Some(stack::start(config, global.quiet).await?)
        }
        None => None,
    };
    let url = local
        .as_ref()
        .and_then(LocalStack::gateway_url)
        .unwrap_or_else(|| global.gateway.clone());
    // Dropping the call's future cancels it, which the gateway passes on to its stages.
    let result = tokio::select! {
        result = call.execute(&url, &global) => result,
        () = unclip_server::shutdown_signal() => Err(Interrupted.into()),
    };
    if let Some(stack) = local {
        let stopped = stack::stop(stack).await;
        result?;
        return stopped;
    }
    result
}
