//! The enrichment benchmark's topic: `enrich-produce` creates a fresh topic and publishes one
//! versitygw-format notification per object that `s3-fill` put (the same keys, in order), as
//! versitygw's Kafka target sends them: one record per message, the key raw, no user metadata,
//! `versionId` null and a hex counter as the sequencer. objmeta (`--enrich auto`) takes them
//! for hints and reads every object with HeadObject before writing it.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::{self, Publisher};
use crate::s3::object_key;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,
    /// The bucket `s3-fill` filled.
    #[arg(long)]
    bucket: String,
    /// Objects `s3-fill` put: one event each, for keys 0 to objects - 1.
    #[arg(long)]
    objects: u64,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

/// Messages handed to librdkafka and not yet acknowledged (they are small).
const IN_FLIGHT: usize = 4096;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn produce(args: Args) -> anyhow::Result<Value> {
    let topic = args.kafka.topic.as_str();
    common::create_topic(&args.kafka.brokers, topic, args.partitions, &[]).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    // versitygw stamps the event with the time of the request, to the second, and counts
    // its events from 1 since the server started.
    let event_time = OffsetDateTime::now_utc()
        .replace_nanosecond(0)?
        .format(&Rfc3339)?;
    let mut publisher = Publisher::new(producer, IN_FLIGHT);
    let (started, mut reported) = (Instant::now(), Instant::now());
    let mut bytes = 0u64;
    for index in 0..args.objects {
        let key = object_key(index);
        let payload = serde_json::to_vec(&record(&args.bucket, &key, &event_time, index + 1))?;
        bytes += payload.len() as u64;
        let message_key = format!("{}/{key}", args.bucket);
        publisher
            .send(FutureRecord::to(topic).key(&message_key).payload(&payload))
            .await?;
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            eprintln!(
                "[enrich-produce] {topic}: {}/{} events published",
                index + 1,
                args.objects
            );
        }
    }
    publisher.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[enrich-produce] {topic}: {} versitygw events ({} partitions) published in {seconds:.1} s",
        args.objects, args.partitions
    );
    Ok(json!({
        "phase": "enrich_produce",
        "topic": topic,
        "bucket": args.bucket,
        "events": args.objects,
        "partitions": args.partitions,
        "bytes": bytes,
        "seconds": seconds,
    }))
}

/// One versitygw notification for an object put, its counter in hex. The size is the
/// object's (`s3-fill` writes the key as the body); the ETag is not the object's (the bench
/// has no MD5 at hand): a hint's fields are replaced by the HeadObject's answer anyway.
fn record(bucket: &str, key: &str, event_time: &str, counter: u64) -> Value {
    json!({"Records": [{
        "eventVersion": "2.2",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": event_time,
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"PrincipalId": "admin"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "webhook-global",
            "bucket": {"name": bucket},
            "object": {
                "key": key,
                "size": key.len(),
                "eTag": format!("\"{counter:032x}\""),
                "versionId": null,
                "sequencer": format!("{counter:X}"),
            },
        },
    }]})
}
