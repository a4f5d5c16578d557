//! Measuring instrument behind `scripts/bench` (one example binary, several subcommands, so
//! the link step runs once). Every subcommand prints one JSON object on stdout (its figures);
//! `report` turns the collected lines into the table and the results file.
//!
//! - `ceiling`: objmeta's rows upserted straight into objmeta's table from one connection, in
//!   several statement shapes; the best one is measured again at full size.
//! - `naive`: one upsert and one synchronous Kafka commit per message.
//! - `wait-committed`: waits until a group's committed offsets reach the topic's end offsets,
//!   sampling the CPU and memory of the given processes meanwhile.
//! - `probe`: publish time → row visible, per message, while a producer runs at a fixed rate.
//! - `flood`: creates a topic that admits ~1 MiB messages and fills it with large events and
//!   large invalid payloads (the bounded-memory scenario).
//! - `cleanup`: drops a run's schemas and topics.

mod ceiling;
mod common;
mod flood;
mod naive;
mod probe;
mod report;
mod wait;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "objmeta benchmark helpers (driven by scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upsert the workload's rows straight into objmeta's table (no Kafka).
    Ceiling(ceiling::Args),
    /// One upsert and one synchronous offset commit per message.
    Naive(naive::Args),
    /// Wait until a group has committed every offset of a topic; sample processes.
    WaitCommitted(wait::Args),
    /// Measure publish → row-visible delay while events arrive at a fixed rate.
    Probe(probe::Args),
    /// Create a topic for large messages and fill it with ~1 MiB events and invalid payloads.
    Flood(flood::Args),
    /// Print the table from collected JSON lines and write the results file.
    Report(report::Args),
    /// Drop the schemas and delete the topics whose names start with a prefix.
    Cleanup(common::CleanupArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let figures = match Cli::parse().command {
        Cmd::Ceiling(args) => ceiling::run(args).await?,
        Cmd::Naive(args) => naive::run(args).await?,
        Cmd::WaitCommitted(args) => wait::run(args).await?,
        Cmd::Probe(args) => probe::run(args).await?,
        Cmd::Flood(args) => flood::run(args).await?,
        Cmd::Report(args) => return report::run(args),
        Cmd::Cleanup(args) => return common::cleanup(args).await,
    };
    println!("{figures}");
    Ok(())
}
