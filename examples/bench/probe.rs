//! Steady-rate delay: publish time → row visible, per message. A reader thread follows the
//! topic from the beginning (assigned partitions, no group) and hands each sampled message's
//! object and publish time (the sequencer: `objmeta produce` stamps it from the wall clock
//! when it publishes) to a loop that asks PostgreSQL, every `--poll`, which pending objects
//! have a row. The delay is taken at the poll that first sees the row, so it is exact to one
//! poll interval plus one query. Needs distinct keys (each object published once).
//!
//! A cross-check from SQL is reported too: `updated_at - event_time`, where `updated_at` is
//! objmeta's `now()`, the start of the writing transaction, so it misses the write itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::common::{self, percentile};
use crate::wait::now_ns;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// objmeta's schema.
    #[arg(long)]
    schema: String,
    /// The producer's rate, for the report.
    #[arg(long)]
    rate: u64,
    /// Messages the producer publishes; the probe ends when all have been seen and checked.
    #[arg(long)]
    messages: u64,
    /// Follow every n-th message.
    #[arg(long, default_value_t = 1)]
    sample_every: u64,
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Created once the reader is attached to the topic (start the producer after it).
    #[arg(long)]
    ready_file: PathBuf,
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// An object to look for and when it was published (Unix ns).
struct Pending {
    bucket: String,
    key: String,
    published_ns: i64,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let client = common::connect(&args.database_url, &args.schema).await?;
    let lookup = client
        .prepare(
            "SELECT u.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(b, k, i) \
             JOIN object_metadata o ON o.bucket = u.b AND o.key = u.k",
        )
        .await?;
    let (sender, receiver) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (args_reader, stop) = (ReaderArgs::from(&args), stop.clone());
        std::thread::spawn(move || read_topic(args_reader, sender, stop))
    };
    let deadline = Instant::now() + args.timeout;
    let mut pending: Vec<Pending> = Vec::new();
    let mut delays_ms: Vec<f64> = Vec::new();
    let mut reader_done = false;
    while !(reader_done && pending.is_empty()) && Instant::now() < deadline {
        loop {
            match receiver.try_recv() {
                Ok(p) => pending.push(p),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    reader_done = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            let buckets: Vec<&str> = pending.iter().map(|p| p.bucket.as_str()).collect();
            let keys: Vec<&str> = pending.iter().map(|p| p.key.as_str()).collect();
            let rows = client.query(&lookup, &[&buckets, &keys]).await?;
            let seen_ns = now_ns() as i64;
            let mut visible = vec![false; pending.len()];
            for row in rows {
                let i: i64 = row.get(0);
                visible[(i - 1) as usize] = true;
            }
            let mut index = 0;
            pending.retain(|p| {
                let keep = !visible[index];
                index += 1;
                if !keep {
                    delays_ms.push((seen_ns - p.published_ns) as f64 / 1e6);
                }
                keep
            });
        }
        tokio::time::sleep(args.poll).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("probe reader panicked"))??;
    if delays_ms.is_empty() {
        bail!("probe: no row became visible before the timeout ({seen} messages read)");
    }
    delays_ms.sort_by(f64::total_cmp);
    let sql = sql_delays(&client).await?;
    Ok(json!({
        "phase": "steady",
        "rate": args.rate,
        "messages": seen,
        "samples": delays_ms.len(),
        "missing": pending.len(),
        "p50_ms": percentile(&delays_ms, 50.0),
        "p99_ms": percentile(&delays_ms, 99.0),
        "max_ms": delays_ms.last(),
        "sql_txn_start": sql,
    }))
}

async fn sql_delays(client: &tokio_postgres::Client) -> anyhow::Result<Value> {
    let row = client
        .query_one(
            "SELECT count(*)::float8, \
               percentile_cont(0.5) WITHIN GROUP (ORDER BY d), \
               percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d) \
             FROM (SELECT 1000 * extract(epoch FROM updated_at - event_time)::float8 AS d \
                   FROM object_metadata) x",
            &[],
        )
        .await?;
    Ok(json!({
        "rows": row.get::<_, f64>(0),
        "p50_ms": row.get::<_, Option<f64>>(1),
        "p99_ms": row.get::<_, Option<f64>>(2),
        "max_ms": row.get::<_, Option<f64>>(3),
    }))
}

struct ReaderArgs {
    kafka: common::KafkaArgs,
    messages: u64,
    sample_every: u64,
    ready_file: PathBuf,
}

impl From<&Args> for ReaderArgs {
    fn from(args: &Args) -> Self {
        ReaderArgs {
            kafka: args.kafka.clone(),
            messages: args.messages,
            sample_every: args.sample_every.max(1),
            ready_file: args.ready_file.clone(),
        }
    }
}

/// Reads the topic from the beginning until `messages` were read or `stop` is set; returns
/// how many were read. Dropping `sender` tells the checker that nothing more comes.
fn read_topic(
    args: ReaderArgs,
    sender: mpsc::Sender<Pending>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("group.id", format!("{}-probe", args.kafka.topic))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .context("creating the probe's reader")?;
    let metadata = consumer.fetch_metadata(Some(&args.kafka.topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            list.add_partition_offset(&args.kafka.topic, partition.id(), Offset::Beginning)?;
        }
    }
    if list.count() == 0 {
        bail!("probe: topic {} has no partitions", args.kafka.topic);
    }
    consumer.assign(&list)?;
    let _ = consumer.poll(Duration::from_millis(200));
    std::fs::write(&args.ready_file, b"ready\n").context("writing the ready file")?;
    let mut read = 0u64;
    while read < args.messages && !stop.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message.context("probe reading")?;
        read += 1;
        if !read.is_multiple_of(args.sample_every) {
            continue;
        }
        let Ok(parsed) = objmeta::event::parse(message.payload()) else {
            continue;
        };
        for change in parsed.changes {
            let pending = Pending {
                bucket: change.object.bucket,
                key: change.object.key,
                published_ns: change.sequencer,
            };
            if sender.send(pending).is_err() {
                return Ok(read);
            }
        }
    }
    Ok(read)
}
