//! Local stacks: the one `--local` starts around a single command, and `unclip stack`, which
//! runs the stage services, the gateway (and Redis) until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use unclip_stack::{
    LocalStack, LocalStackConfig, RedisMode, ServiceBinaries, Stage, StageReplicas,
};

use crate::Interrupted;
use crate::args::{GlobalArgs, StackArgs};

/// The configuration of a stack with a gateway on `model`.
pub fn config(
    global: &GlobalArgs,
    model: &Path,
    replicas: StageReplicas,
    redis: RedisMode,
    gateway_args: Vec<String>,
) -> anyhow::Result<LocalStackConfig> {
    let services = &global.services;
    let binaries = match &services.bin_dir {
        Some(dir) => ServiceBinaries::in_dir(dir),
        None => ServiceBinaries::next_to_current_exe()?,
    };
    Ok(LocalStackConfig {
        ort_library: services.ort_library.clone(),
        intra_threads: services.intra_threads,
        startup_timeout: Duration::from_secs(services.startup_timeout),
        replicas,
        gateway: true,
        gateway_args,
        redis,
        ..LocalStackConfig::new(model, binaries)
    })
}

/// Starts `config`'s stack; Ctrl-C or SIGTERM while it loads stops it again.
pub async fn start(config: LocalStackConfig, quiet: bool) -> anyhow::Result<LocalStack> {
    let model = config.model.clone();
    let started = Instant::now();
    if !quiet {
        eprintln!("starting the local stack on {} ...", model.display());
    }
    let stack = tokio::select! {
        stack = LocalStack::start(config) => stack?,
        () = unclip_server::shutdown_signal() => return Err(Interrupted.into()),
    };
    if !quiet {
        eprintln!("local stack up in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(stack)
}

/// Stops `stack`; processes that ended badly are reported as warnings, not errors (the
/// command's own result is what counts).
pub async fn stop(stack: LocalStack) -> anyhow::Result<()> {
    let exits = stack.shutdown().await.context("stopping the local stack")?;
    for exit in exits.iter().filter(|e| !e.is_clean()) {
        tracing::warn!("the local {} ended with {}", exit.process, exit.status);
    }
    Ok(())
}

/// The `--listen-info` file's lines: `gateway=URL`, `redis=URL` when it runs, and the stage
/// replicas' URLs (`clip=URL,URL`).
pub fn listen_info(stack: &LocalStack) -> String {
    let mut text = String::new();
    if let Some(url) = stack.gateway_url() {
        text.push_str(&format!("gateway={url}\n"));
    }
    if let Some(url) = stack.redis_url() {
        text.push_str(&format!("redis={url}\n"));
    }
    for stage in Stage::ALL {
        text.push_str(&format!("{stage}={}\n", stack.stage_urls(stage).join(",")));
    }
    text
}

/// Writes `text` to `path` whole: to a temporary file next to it, then renamed, so a script
/// polling for `path` never reads half of it.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `unclip stack`: starts everything, prints where it listens, waits for Ctrl-C or SIGTERM,
/// stops everything.
pub async fn run(global: &GlobalArgs, args: &StackArgs) -> anyhow::Result<()> {
    let Some(model) = args.model.as_ref().or(global.local.as_ref()) else {
        bail!("--model is needed: the model repository the services load (e.g. models/shapes)");
    };
    if let Some(path) = &args.listen_info {
        crate::output::check_output_dir(path)?;
    }
    let redis = if global.redis {
        RedisMode::Required
    } else {
        RedisMode::Off
    };
    let replicas = args.stage_replicas();
    let config = config(global, model, replicas, redis, args.gateway_args.clone())?;
    let stack = start(config, global.quiet).await?;

    if let Some(url) = stack.gateway_url() {
        println!("gateway {url}");
    }
    if let Some(url) = stack.redis_url() {
        println!("redis {url}");
    }
    println!("stages {replicas} (model {})", model.display());
    let written = match &args.listen_info {
        Some(path) => match write_atomically(path, &listen_info(&stack)) {
            Ok(()) => Some(path),
            Err(e) => {
                stop(stack).await?;
                return Err(e);
            }
        },
        None => None,
    };
    if !global.quiet {
        eprintln!("serving; Ctrl-C or SIGTERM stops everything");
    }

    unclip_server::shutdown_signal().await;
    if !global.quiet {
        eprintln!("stopping ...");
    }
    if let Some(path) = written {
        let _ = std::fs::remove_file(path);
    }
    stop(stack).await?;
    if !global.quiet {
        eprintln!("stopped");
    }
    Ok(())
}
