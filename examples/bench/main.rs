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
//! - `s3-fill`: creates a bucket and puts small objects with one user metadata entry each.
//! - `s3-heads`: the bare concurrent HeadObject loop over every key, with objmeta's S3 client.
//! - `s3-backfill`: runs `objmeta backfill` on the bucket; wall time, peak RSS, CPU.
//! - `enrich-produce`: publishes one versitygw-format event per object of a filled bucket to
//!   a fresh topic (the enrichment benchmark: objmeta reads each object with HeadObject).
//! - `s3-drop`: deletes a bucket's objects and the bucket.
//! - `cleanup`: drops a run's schemas and topics.

mod backfill;
mod ceiling;
mod common;
mod enrich;
mod flood;
mod heads;
mod naive;
mod probe;
mod report;
mod s3;
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
    /// Create a bucket and put small objects with one user metadata entry each.
    S3Fill(s3::FillArgs),
    /// HEAD every object of a bucket with objmeta's S3 client, nothing else (the reference).
    S3Heads(heads::Args),
    /// Run `objmeta backfill` on a bucket; measure its rate, peak RSS and CPU.
    S3Backfill(backfill::Args),
    /// Publish one versitygw-format event per object of a filled bucket to a fresh topic.
    EnrichProduce(enrich::Args),
    /// Delete every object of a bucket, then the bucket.
    S3Drop(s3::BucketArgs),
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
        Cmd::S3Fill(args) => s3::fill(args).await?,
        Cmd::S3Heads(args) => heads::run(args).await?,
        Cmd::S3Backfill(args) => backfill::run(args).await?,
        Cmd::EnrichProduce(args) => enrich::produce(args).await?,
        Cmd::S3Drop(args) => s3::drop_bucket(args).await?,
        Cmd::Report(args) => return report::run(args),
        Cmd::Cleanup(args) => return common::cleanup(args).await,
    };
    println!("{figures}");
    Ok(())
}
