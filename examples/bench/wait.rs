//! Catch-up measurement: waits until the consumer group has committed every offset of the
//! topic (committed == end offset on every partition, read from Kafka itself, so it works for
//! any number of replicas), sampling the replicas' CPU and memory, PostgreSQL's and the
//! broker's CPU and the machine's load meanwhile.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::common::{self, cpu_seconds, status_kib, Load};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,
    #[arg(long)]
    group: String,
    /// A label for the report (e.g. distinct, mix, scale-out, replay).
    #[arg(long)]
    label: String,
    /// The `phase` of the printed figures (the report's section).
    #[arg(long, default_value = "catchup")]
    phase: String,
    /// objmeta replicas to watch (repeatable); an exited replica is an error.
    #[arg(long = "pid", required = true)]
    pids: Vec<u32>,
    /// PostgreSQL's postmaster (its whole process tree is counted).
    #[arg(long)]
    pg_pid: Option<u32>,
    /// The Kafka broker's process.
    #[arg(long)]
    kafka_pid: Option<u32>,
    /// When the replicas were started, Unix ns (defaults to now).
    #[arg(long)]
    since_ns: Option<u128>,
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Give up when the committed offsets have not moved for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How often a progress line goes to stderr.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    progress_every: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the offset reader")?;
    let partitions = tokio::task::block_in_place(|| end_offsets(&consumer, &args.kafka.topic))?;
    let end: i64 = partitions.iter().map(|(_, high)| high).sum();
    let before = Load::sample(args.pg_pid, args.kafka_pid);
    let since = args.since_ns.unwrap_or_else(now_ns);
    let started = Instant::now();
    let mut first_commit_ns = None;
    let mut peak_rss = 0u64;
    let (mut last_committed, mut last_progress) = (-1i64, Instant::now());
    let mut reported = Instant::now();
    loop {
        let committed = tokio::task::block_in_place(|| committed(&consumer, &args, &partitions))?;
        if committed != last_committed {
            (last_committed, last_progress) = (committed, Instant::now());
        }
        if committed > 0 && first_commit_ns.is_none() {
            first_commit_ns = Some(now_ns());
        }
        for &pid in &args.pids {
            let Some(rss) = status_kib(pid, "VmRSS") else {
                bail!("objmeta (pid {pid}) exited before catching up ({committed}/{end} committed); see its log");
            };
            peak_rss = peak_rss.max(rss);
        }
        if committed >= end {
            break;
        }
        if reported.elapsed() >= args.progress_every {
            reported = Instant::now();
            eprintln!(
                "[wait] {}: {committed}/{end} offsets committed after {:.0} s, RSS now {} MiB",
                args.label,
                started.elapsed().as_secs_f64(),
                current_rss_mib(&args.pids)
            );
        }
        if last_progress.elapsed() > args.stall_timeout {
            bail!(
                "stalled: group {} committed {committed} of {end} offsets of {} and nothing moved for {:?} (the replicas are still running)",
                args.group,
                args.kafka.topic,
                args.stall_timeout
            );
        }
        if started.elapsed() > args.timeout {
            bail!(
                "timeout: group {} committed {committed} of {end} offsets of {} after {:?}",
                args.group,
                args.kafka.topic,
                args.timeout
            );
        }
        tokio::time::sleep(args.interval).await;
    }
    let done_ns = now_ns();
    let after = Load::sample(args.pg_pid, args.kafka_pid);
    let seconds = (done_ns - since) as f64 / 1e9;
    let active = first_commit_ns.map_or(seconds, |t| (done_ns - t) as f64 / 1e9);
    let cpu: f64 = args
        .pids
        .iter()
        .filter_map(|&p| cpu_seconds(p, false))
        .sum();
    let hwm = args
        .pids
        .iter()
        .filter_map(|&p| status_kib(p, "VmHWM"))
        .max();
    let rss_end: Vec<u64> = args
        .pids
        .iter()
        .filter_map(|&p| status_kib(p, "VmRSS"))
        .collect();
    let load = before.until(&after, seconds);
    Ok(json!({
        "phase": args.phase,
        "label": args.label,
        "replicas": args.pids.len(),
        "events": end,
        "seconds": seconds,
        "seconds_after_first_commit": active,
        "events_per_s": end as f64 / seconds,
        "events_per_s_after_first_commit": end as f64 / active,
        "cpu_seconds": cpu,
        "cpu_seconds_per_10k": cpu * 10_000.0 / end.max(1) as f64,
        "peak_rss_kib": hwm.unwrap_or(peak_rss),
        "peak_rss_sampled_kib": peak_rss,
        "end_rss_kib": rss_end,
        "pg_cores": load.pg_cores,
        "kafka_cores": load.service_cores,
        "machine_busy_percent": load.machine_busy_percent,
    }))
}

/// The replicas' current resident sets, `+`-separated, MiB.
fn current_rss_mib(pids: &[u32]) -> String {
    let each: Vec<String> = pids
        .iter()
        .filter_map(|&p| status_kib(p, "VmRSS"))
        .map(|k| (k / 1024).to_string())
        .collect();
    each.join("+")
}

/// Every partition of the topic with its high watermark.
fn end_offsets(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            Ok((p, high))
        })
        .collect()
}

/// Sum over partitions of the group's committed offset, capped at the end offset.
fn committed(
    consumer: &BaseConsumer,
    args: &Args,
    partitions: &[(i32, i64)],
) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for (partition, _) in partitions {
        list.add_partition(&args.kafka.topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .context("reading committed offsets")?;
    Ok(partitions
        .iter()
        .map(|(partition, high)| {
            match committed
                .find_partition(&args.kafka.topic, *partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(n)) => n.min(*high),
                _ => 0,
            }
        })
        .sum())
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
