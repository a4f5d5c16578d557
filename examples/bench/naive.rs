//! The naive consumer, as a user following the original guide would write it: for each
//! message, parse it, upsert its row with one single-row statement (autocommit), then commit
//! that message's offset synchronously. Nothing is batched or overlapped. It writes into its
//! own fresh schema (objmeta's table, indexes included) and stops after `--messages`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;
use serde_json::{json, Value};

use objmeta::event::{Action, Change};

use crate::common;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,
    #[arg(long)]
    group: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Fresh schema to write into (created, and dropped at the end).
    #[arg(long)]
    schema: String,
    /// Stop after this many messages…
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// …or after this long, whichever comes first (the rate is taken over what was done).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_time: Duration,
    /// Names this variant in the report.
    #[arg(long, default_value = "per-message commit")]
    label: String,
    /// Commit the offset after every n-th message (1: the naive consumer; larger values only
    /// to see what the per-message commit costs).
    #[arg(long, default_value_t = 1)]
    commit_every: u64,
    /// Give up (with an error) after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

const SINGLE_ROW_UPSERT_SQL: &str = r#"
INSERT INTO object_metadata AS t (
    bucket, key, version_id, size, etag, content_type, user_metadata,
    system_metadata, event_name, event_time, sequencer, deleted_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9, $10, $11, $12, now())
ON CONFLICT (bucket, key) DO UPDATE SET
    version_id = excluded.version_id, size = excluded.size, etag = excluded.etag,
    content_type = excluded.content_type, user_metadata = excluded.user_metadata,
    system_metadata = excluded.system_metadata, event_name = excluded.event_name,
    event_time = excluded.event_time, sequencer = excluded.sequencer,
    deleted_at = excluded.deleted_at, updated_at = excluded.updated_at
WHERE excluded.sequencer >= t.sequencer
"#;

pub async fn run(args: Args) -> anyhow::Result<Value> {
    common::migrate(&args.database_url, &args.schema).await?;
    let client = common::connect(&args.database_url, &args.schema).await?;
    let statement = client.prepare(SINGLE_ROW_UPSERT_SQL).await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the naive consumer")?;
    consumer.subscribe(&[&args.kafka.topic])?;
    let deadline = Instant::now() + args.timeout;
    let (mut messages, mut rows) = (0u64, 0u64);
    let mut started = None;
    while messages < args.messages && started.is_none_or(|s: Instant| s.elapsed() < args.max_time) {
        if Instant::now() > deadline {
            bail!(
                "naive consumer: only {messages} of {} messages after {:?}",
                args.messages,
                args.timeout
            );
        }
        let polled = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100)));
        let Some(message) = polled else { continue };
        let message = message.context("consuming")?;
        started.get_or_insert_with(Instant::now);
        if let Ok(parsed) = objmeta::event::parse(message.payload()) {
            for change in &parsed.changes {
                let (version_id, size, etag, content_type, user, system, deleted_at) =
                    columns(change);
                client
                    .execute(
                        &statement,
                        &[
                            &change.object.bucket,
                            &change.object.key,
                            &version_id,
                            &size,
                            &etag,
                            &content_type,
                            &user,
                            &system,
                            &change.event_name,
                            &change.event_time,
                            &change.sequencer,
                            &deleted_at,
                        ],
                    )
                    .await?;
                rows += 1;
            }
        }
        messages += 1;
        if messages % args.commit_every.max(1) == 0 {
            tokio::task::block_in_place(|| consumer.commit_message(&message, CommitMode::Sync))?;
        }
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    common::drop_schema(&client, &args.schema).await?;
    Ok(json!({
        "phase": "naive",
        "label": args.label,
        "commit_every": args.commit_every,
        "messages": messages,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows as f64 / seconds,
        "messages_per_s": messages as f64 / seconds,
    }))
}

type RowColumns<'a> = (
    Option<&'a str>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    Option<time::OffsetDateTime>,
);

fn columns(change: &Change) -> RowColumns<'_> {
    match &change.action {
        Action::Upsert(s) => (
            s.version_id.as_deref(),
            s.size,
            s.etag.as_deref(),
            s.content_type.as_deref(),
            s.user_metadata.as_json(),
            s.system_metadata.as_json(),
            None,
        ),
        Action::Remove { version_id, .. } => (
            version_id.as_deref(),
            None,
            None,
            None,
            "{}",
            "{}",
            Some(change.event_time),
        ),
    }
}
