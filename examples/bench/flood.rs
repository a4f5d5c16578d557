//! Flood: fills a topic with large messages for the bounded-memory scenario. The topic is
//! created with a `max.message.bytes` that admits them; each message is about
//! `--message-bytes` long: mostly valid MinIO events carrying one large user metadata value
//! (`X-Amz-Meta-Blob`), and `--invalid-percent` of payloads that are not JSON, which objmeta
//! keeps whole as dead letters. The filler is pseudo-random alphanumerics, so neither the
//! producer (compression off) nor PostgreSQL's TOAST compression shrinks it much: the bytes
//! objmeta holds are the bytes on the wire.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use objmeta::produce::{workload, WorkloadSpec};

use crate::common::{self, Publisher};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,
    /// Messages to publish.
    #[arg(long)]
    messages: u64,
    /// Size of each message, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    message_bytes: usize,
    /// The topic's `max.message.bytes` (and the producer's `message.max.bytes`).
    #[arg(long, default_value_t = 2 << 20)]
    max_message_bytes: usize,
    /// Share of messages that are not MinIO events (dead letters), evenly spread.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    invalid_percent: u8,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Messages handed to librdkafka and not yet acknowledged: enough to keep the broker busy,
/// few enough that the producer's own memory stays small.
const IN_FLIGHT: usize = 16;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(args: Args) -> anyhow::Result<Value> {
    if args.message_bytes + 4096 > args.max_message_bytes {
        bail!(
            "--message-bytes {} leaves no room for the record's framing under --max-message-bytes {}",
            args.message_bytes,
            args.max_message_bytes
        );
    }
    create_topic(&args).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("message.max.bytes", args.max_message_bytes.to_string())
        .set("compression.type", "none")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let spec = WorkloadSpec {
        count: args.messages,
        buckets: 2,
        objects: args.messages,
        copy_percent: 0,
        delete_percent: 0,
        seed: args.seed,
    };
    let mut events = workload(&spec);
    let mut filler = Filler::new(args.seed);
    let mut publisher = Publisher::new(producer, IN_FLIGHT);
    let (started, mut reported) = (Instant::now(), Instant::now());
    let (mut invalid, mut bytes) = (0u64, 0u64);
    for (i, event) in events.by_ref().enumerate() {
        let i = i as u64;
        let pct = u64::from(args.invalid_percent);
        let payload = if (i + 1) * pct / 100 != i * pct / 100 {
            invalid += 1;
            invalid_payload(&mut filler, args.message_bytes)
        } else {
            valid_payload(&event.payload, &mut filler, args.message_bytes)?
        };
        bytes += payload.len() as u64;
        let record = FutureRecord::to(&args.kafka.topic)
            .key(&event.key)
            .payload(&payload);
        publisher.send(record).await?;
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            progress(i + 1, args.messages, bytes, started);
        }
    }
    events.finish()?;
    publisher.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    progress(args.messages, args.messages, bytes, started);
    Ok(json!({
        "phase": "flood_produce",
        "topic": args.kafka.topic,
        "messages": args.messages,
        "invalid": invalid,
        "valid": args.messages - invalid,
        "bytes": bytes,
        "message_bytes": args.message_bytes,
        "max_message_bytes": args.max_message_bytes,
        "seconds": seconds,
    }))
}

fn progress(done: u64, total: u64, bytes: u64, started: Instant) {
    let mib = bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "[flood] published {done}/{total} messages ({mib:.0} MiB, {:.0} MiB/s)",
        mib / started.elapsed().as_secs_f64().max(1e-3)
    );
}

/// The topic, with the `max.message.bytes` that lets the large messages in.
async fn create_topic(args: &Args) -> anyhow::Result<()> {
    let max = args.max_message_bytes.to_string();
    common::create_topic(
        &args.kafka.brokers,
        &args.kafka.topic,
        args.partitions,
        &[("max.message.bytes", &max)],
    )
    .await?;
    eprintln!(
        "[flood] created topic {} ({} partitions, max.message.bytes {max})",
        args.kafka.topic, args.partitions
    );
    Ok(())
}

/// A generated MinIO event with one user metadata value grown so that the whole message is
/// `size` bytes (alphanumerics need no JSON escaping, so the length is exact).
fn valid_payload(event: &[u8], filler: &mut Filler, size: usize) -> anyhow::Result<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(event).context("reading a generated event")?;
    let base = serde_json::to_vec(&value)?.len() + r#","X-Amz-Meta-Blob":"""#.len();
    let metadata = value
        .pointer_mut("/Records/0/s3/object/userMetadata")
        .and_then(Value::as_object_mut)
        .context("a generated event without s3.object.userMetadata")?;
    let blob = filler.text(size.saturating_sub(base));
    metadata.insert("X-Amz-Meta-Blob".into(), Value::String(blob));
    Ok(serde_json::to_vec(&value)?)
}

/// Not JSON at all: objmeta dead-letters it with its whole payload.
fn invalid_payload(filler: &mut Filler, size: usize) -> Vec<u8> {
    let mut payload = b"not a MinIO event: ".to_vec();
    payload.extend_from_slice(filler.text(size.saturating_sub(payload.len())).as_bytes());
    payload
}

/// xorshift64*: deterministic filler, fast enough for gigabytes.
struct Filler(u64);

impl Filler {
    fn new(seed: u64) -> Self {
        Filler(seed | 1)
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.extend(
                word.to_le_bytes()
                    .iter()
                    .map(|b| ALPHABET[usize::from(b & 63)]),
            );
        }
        out.truncate(len);
        // ASCII by construction, so the conversion cannot fail.
        String::from_utf8(out).unwrap_or_default()
    }
}
