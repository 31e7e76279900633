//! `ragd serve`: the gRPC service on the data directory, until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use clap::Args;
use ragd_server::{Overrides, Settings};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML settings file (layered over the defaults, under RAGD_* variables and these flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Collections directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC address, e.g. 127.0.0.1:50051 (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Prometheus /metrics address; empty disables it.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Models directory.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Serve as a read replica of the generations a writer publishes (settings `[replica]`:
    /// `url`, `etcd`, `writer`); writes are refused.
    #[arg(long)]
    replica: bool,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// The settings `args` describe (file, environment, flags), validated.
pub(crate) fn settings(args: &ServeArgs) -> Result<Settings> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        data_dir: args.data_dir.clone(),
        models_dir: args.models_dir.clone(),
        replica: args
            .replica
            .then_some(ragd_server::ReplicaOverrides { enabled: true }),
    };
    Ok(Settings::load(args.config.as_deref(), &overrides)?)
}

/// The log format setting, read before logging starts (`RAGD_LOG_FORMAT` or the file).
pub(crate) fn log_json(args: &ServeArgs) -> bool {
    settings(args).is_ok_and(|s| s.log_format == "json")
}

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let settings = settings(&args)?;
    if args.print_config {
        print!(
            "{}",
            toml::to_string_pretty(&settings).context("rendering the settings")?
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ragd-io")
        .max_blocking_threads(settings.limits.max_inflight.clamp(4, 512))
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        // Handlers first: a SIGTERM sent as soon as `listening on` appears must find them.
        let stop = shutdown_signal()?;
        let bound = ragd_server::bind(settings).await?;
        bound.serve(stop).await?;
        anyhow::Ok(())
    });
    // Serving is over and every job was told to stop; a blocking task that has not noticed yet
    // does not hold the process (what it had not committed was never acknowledged).
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
