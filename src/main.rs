//! The objmeta binary: parses the configuration, sets up logging and
//! signals, runs the chosen subcommand and maps its result to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use objmeta::config::{Cli, Command, ListingConfig, LogFormat, OutputFormat};
use objmeta::listing::{Kind, Summary};

/// How long the exit waits for background work still running (a Kafka
/// client that stopped answering must not keep the process alive).
const EXIT_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_command(cli.command));
    runtime.shutdown_timeout(EXIT_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "objmeta stopped");
            ExitCode::FAILURE
        }
    }
}

/// Keeps glibc's malloc from holding memory the budget already gave back.
/// By default glibc raises its mmap threshold each time a large block is
/// freed, so that later message-sized blocks (a 1 MiB payload, its parsed
/// metadata, a statement's buffer) come from the heap of whichever of a
/// dozen per-thread arenas allocated them and stay resident after they are
/// freed. A fixed threshold returns such blocks to the system at once, and
/// two arenas are plenty for a poller, a few async workers and librdkafka.
/// Measured on a flood of 1 MiB messages: peak RSS 132 -> 96 MiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called first thing in
    // main, before any other thread exists. A refused setting (return 0)
    // leaves glibc's default, which is still correct.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Other allocators need no tuning here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(config) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            objmeta::run(*config, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Migrate(config) => objmeta::migrate(&config)
            .await
            .map(|applied| tracing::info!(applied, "migrations done"))
            .map_err(anyhow::Error::from),
        Command::Produce(args) => objmeta::produce::run(*args).await.map(|_| ()),
        Command::Backfill(config) => read_buckets(Kind::Backfill, &config).await,
        Command::Reconcile(config) => read_buckets(Kind::Reconcile, &config).await,
    }
}

/// Backfill or reconcile; prints the summaries, and fails unless every
/// listing completed without errors.
async fn read_buckets(kind: Kind, config: &ListingConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let summaries = objmeta::read_buckets(kind, config, shutdown.clone()).await?;
    for summary in &summaries {
        match config.output {
            OutputFormat::Json => println!("{}", serde_json::to_string(summary)?),
            OutputFormat::Text => println!("{}", describe(summary)),
        }
    }
    let failed = summaries.iter().filter(|s| !s.succeeded()).count();
    if shutdown.is_cancelled() {
        anyhow::bail!(
            "interrupted: what was read is written; run the same command again to resume"
        );
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} listings did not complete without errors",
            summaries.len()
        );
    }
    Ok(())
}

fn describe(s: &Summary) -> String {
    let mut line = format!(
        "{} {}/{}{}: listed {}, inserted {}, updated {}, unchanged {}, skipped {}, unsettled {} \
         (rereads {}), gone {}, removed {}, errors {}, retries {} in {:.1}s",
        s.kind,
        s.bucket,
        s.prefix,
        if s.resumed { " (resumed)" } else { "" },
        s.tally.listed,
        s.tally.inserted,
        s.tally.updated,
        s.tally.unchanged,
        s.tally.skipped,
        s.tally.unsettled,
        s.rereads,
        s.tally.gone,
        s.removed,
        s.tally.errors,
        s.retries,
        s.seconds
    );
    if let Some(reason) = &s.stopped {
        line.push_str(&format!("; stopped: {reason}"));
    } else if !s.complete {
        line.push_str("; not complete");
    }
    line
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGINT or SIGTERM starts a graceful shutdown; a second signal is not
/// needed (the drain has its own deadline).
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}
