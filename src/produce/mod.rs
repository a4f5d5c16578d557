//! `objmeta produce`: publishes MinIO-format bucket notifications to Kafka, for load tests,
//! demos and integration tests, without a MinIO server.
//!
//! Messages are what MinIO's Kafka target sends (see `event`'s wire structs): one event per
//! message, keyed `<bucket>/<raw object name>`, partitioned with FNV-1a like MinIO's sarama
//! client. The workload is deterministic (a seed, a fixed clock), so tests can rebuild the
//! expected final state of every object from the same `WorkloadSpec`.

mod workload;

pub use workload::{event_time, guide_scenario, workload, ProducedMessage, Workload, WorkloadSpec};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::redact::{RedactingContext, Redactor};

/// Arguments of `objmeta produce`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "minio-events")]
    pub topic: String,
    /// Number of events to publish.
    #[arg(long, env = "PRODUCE_COUNT", default_value_t = 1000)]
    pub count: u64,
    /// Events per second; 0 publishes as fast as the broker accepts.
    #[arg(long, env = "PRODUCE_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Number of buckets the objects are spread over.
    #[arg(long, env = "PRODUCE_BUCKETS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub buckets: u32,
    /// Distinct objects across all buckets; keys repeat when --count is larger.
    #[arg(long, env = "PRODUCE_OBJECTS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub objects: u64,
    /// Share of later events of an object that are metadata-replacing copies, in percent.
    #[arg(long, env = "PRODUCE_COPY_PERCENT", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub copy_percent: u8,
    /// Share of later events of an object that are deletes, in percent.
    #[arg(long, env = "PRODUCE_DELETE_PERCENT", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub delete_percent: u8,
    /// Publish as a versioned bucket does: every Put and Copy a new version, every Delete a
    /// delete marker.
    #[arg(long, env = "PRODUCE_VERSIONED")]
    pub versioned: bool,
    /// Seed of the workload: the same seed and sizes give the same messages.
    #[arg(long, env = "PRODUCE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Partitions of the topic when it has to be created; an existing topic is left alone.
    #[arg(long, env = "PRODUCE_PARTITIONS", default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Publish a fixed scenario instead of the generated mix (then the sizes are ignored).
    #[arg(long, env = "PRODUCE_SCENARIO", value_enum)]
    pub scenario: Option<Scenario>,
    /// Any librdkafka property as `key=value` (SASL, TLS, …), passed as is; repeatable.
    /// In the environment, separate several with `;`. Overrides the producer defaults.
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = crate::config::PropertyParser
    )]
    pub kafka_property: Vec<(String, String)>,
}

impl ProduceArgs {
    pub fn workload_spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            count: self.count,
            buckets: self.buckets,
            objects: self.objects,
            copy_percent: self.copy_percent,
            delete_percent: self.delete_percent,
            seed: self.seed,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The original guide's example: a Put of test-bucket/test-file_apiid.txt with metadata
    /// id=1843, then a Copy onto itself replacing the metadata (id=1844).
    Guide,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceSummary {
    pub sent: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("--copy-percent ({copy}) plus --delete-percent ({delete}) exceed 100 (env PRODUCE_COPY_PERCENT, PRODUCE_DELETE_PERCENT)")]
    Percentages { copy: u8, delete: u8 },
    #[error("kafka client: {0}")]
    Client(KafkaError),
    #[error("creating topic {topic:?} on {brokers}: {reason}")]
    CreateTopic {
        topic: String,
        brokers: String,
        reason: String,
    },
    #[error("enqueueing a message for {key:?}: {error}")]
    Enqueue { key: String, error: KafkaError },
    #[error("{failed} message(s) could not be delivered; first: {first}")]
    Delivery { failed: u64, first: String },
    #[error("{pending} message(s) still undelivered after {timeout:?}")]
    FlushTimeout { pending: u64, timeout: Duration },
    #[error("encoding a message: {0}")]
    Encode(String),
}

/// librdkafka reports every message within `message.timeout.ms` (300 s by default); this only
/// guards against waiting forever if that setting is raised.
const DELIVERY_WAIT: Duration = Duration::from_secs(330);
/// Topic creation is also the first contact with the brokers: fail fast when they are unreachable.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How far ahead of the schedule a rate-limited producer may be before it sleeps: tokio's
/// timer has millisecond resolution, so high rates are paced in bursts of one tick.
const PACING_TICK: Duration = Duration::from_millis(1);
/// Messages between voluntary yields, so a fast loop does not starve other tasks.
const YIELD_EVERY: u64 = 1024;

/// Publishes the workload (or scenario) and waits until every message is delivered. Prints a
/// progress line to stderr once a second and a summary at the end.
pub async fn run(args: ProduceArgs) -> anyhow::Result<ProduceSummary> {
    let spec = args.workload_spec();
    spec.validate()?;
    let mut workload = match args.scenario {
        Some(Scenario::Guide) => Workload::guide(),
        None if args.versioned => Workload::new(&spec).versioned(),
        None => Workload::new(&spec),
    }
    .with_wall_clock();
    let total = workload.len_hint();
    let base = base_config(&args.brokers, &args.kafka_property);
    let redactor = Redactor::new(&args.kafka_property);
    ensure_topic(&base, &args.topic, args.partitions, &redactor).await?;
    let tracker = DeliveryTracker {
        redactor: redactor.clone(),
        ..DeliveryTracker::default()
    };
    let producer: ThreadedProducer<DeliveryTracker> = producer_config(base, &args.kafka_property)
        .create_with_context(tracker)
        .map_err(|e| ProduceError::Client(redactor.error(e)))?;
    let mut progress = Progress::new(total);
    let sent = publish(
        &producer,
        &args.topic,
        &mut workload,
        args.rate,
        &mut progress,
    )
    .await?;
    workload.finish()?;
    wait_for_deliveries(&producer, sent, &mut progress).await?;
    let summary = ProduceSummary {
        sent,
        elapsed: progress.started.elapsed(),
    };
    eprintln!("{}", summary.describe(&args.topic));
    Ok(summary)
}

impl ProduceSummary {
    /// `produced 100000 events to minio-events in 1.8s (55000/s)`.
    pub fn describe(&self, topic: &str) -> String {
        let seconds = self.elapsed.as_secs_f64();
        let per_second = if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        };
        format!(
            "produced {} events to {topic} in {seconds:.1}s ({per_second:.0}/s)",
            self.sent
        )
    }
}

/// Brokers plus the user's properties: what the admin client needs (security settings).
fn base_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    apply_properties(&mut config, properties);
    config
}

/// Producer defaults, then the user's properties again so that they win.
/// `partitioner=fnv1a` is librdkafka's equivalent of sarama's default hash partitioner, which
/// MinIO uses: an object's events land in the partition MinIO would pick.
fn producer_config(mut config: ClientConfig, properties: &[(String, String)]) -> ClientConfig {
    config
        .set("partitioner", "fnv1a")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    apply_properties(&mut config, properties);
    config
}

fn apply_properties(config: &mut ClientConfig, properties: &[(String, String)]) {
    crate::redact::apply(config, properties);
}

/// Creates the topic when it does not exist; the broker's default replication factor is used.
async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    redactor: &Redactor,
) -> Result<(), ProduceError> {
    let admin: AdminClient<RedactingContext> = config
        .create_with_context(RedactingContext(redactor.clone()))
        .map_err(|e| ProduceError::Client(redactor.error(e)))?;
    let timeout = Some(ADMIN_TIMEOUT);
    let options = AdminOptions::new()
        .request_timeout(timeout)
        .operation_timeout(timeout);
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let failed = |reason: String| ProduceError::CreateTopic {
        topic: topic.to_string(),
        brokers: redactor
            .scrub(config.get("bootstrap.servers").unwrap_or_default())
            .into_owned(),
        reason,
    };
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|e| failed(redactor.scrub(&e.to_string()).into_owned()))?;
    for result in results {
        match result {
            Ok(_) => eprintln!("created topic {topic} with {partitions} partitions"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(failed(code.to_string())),
        }
    }
    Ok(())
}

/// Enqueues every message; librdkafka's bounded queue (`queue.buffering.max.messages`) is the
/// in-flight window: when it is full, wait a tick for deliveries to make room.
async fn publish(
    producer: &ThreadedProducer<DeliveryTracker>,
    topic: &str,
    workload: &mut Workload,
    rate: u64,
    progress: &mut Progress,
) -> Result<u64, ProduceError> {
    let mut sent = 0u64;
    for message in workload {
        pace(progress.started, sent, rate).await;
        loop {
            let record = BaseRecord::to(topic)
                .key(&message.key)
                .payload(&message.payload);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.context().check()?;
                    tokio::time::sleep(PACING_TICK).await;
                }
                Err((error, _)) => {
                    let key = message.key.clone();
                    return Err(ProduceError::Enqueue { key, error });
                }
            }
        }
        sent += 1;
        producer.context().check()?;
        progress.maybe_report(sent, producer.context());
        if sent.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
    }
    Ok(sent)
}

/// Sleeps while message number `sent` is more than a tick ahead of `rate` per second.
async fn pace(started: Instant, sent: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due_nanos = u128::from(sent) * 1_000_000_000 / u128::from(rate);
    let offset = Duration::from_nanos(u64::try_from(due_nanos).unwrap_or(u64::MAX));
    let Some(due) = started.checked_add(offset) else {
        return;
    };
    if due > Instant::now() + PACING_TICK {
        tokio::time::sleep_until(due).await;
    }
}

/// The end-of-run flush: every enqueued message is either delivered or reported failed.
async fn wait_for_deliveries(
    producer: &ThreadedProducer<DeliveryTracker>,
    sent: u64,
    progress: &mut Progress,
) -> Result<(), ProduceError> {
    let deadline = Instant::now() + DELIVERY_WAIT;
    loop {
        let tracker = producer.context();
        tracker.check()?;
        let delivered = tracker.delivered.load(Ordering::Relaxed);
        if delivered >= sent {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending = sent - delivered;
            return Err(ProduceError::FlushTimeout {
                pending,
                timeout: DELIVERY_WAIT,
            });
        }
        progress.maybe_report(sent, tracker);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts delivery reports (called on librdkafka's polling thread) and keeps the first error.
#[derive(Default)]
struct DeliveryTracker {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    redactor: Redactor,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.redactor.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.redactor.client_error(&error, reason);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let (error, message) = match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(failure) => failure,
        };
        if let Ok(mut first) = self.first_error.lock() {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            first.get_or_insert_with(|| format!("key {key:?}: {error}"));
        }
        self.failed.fetch_add(1, Ordering::Release);
    }
}

impl DeliveryTracker {
    fn check(&self) -> Result<(), ProduceError> {
        let failed = self.failed.load(Ordering::Acquire);
        if failed == 0 {
            return Ok(());
        }
        let first = match self.first_error.lock() {
            Ok(first) => first.clone().unwrap_or_default(),
            Err(_) => String::new(),
        };
        Err(ProduceError::Delivery { failed, first })
    }
}

/// Once-a-second progress lines on stderr.
struct Progress {
    started: Instant,
    next_report: Instant,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let started = Instant::now();
        Progress {
            started,
            next_report: started + Duration::from_secs(1),
            total,
        }
    }

    fn maybe_report(&mut self, sent: u64, tracker: &DeliveryTracker) {
        let now = Instant::now();
        if now < self.next_report {
            return;
        }
        self.next_report = now + Duration::from_secs(1);
        let seconds = now
            .duration_since(self.started)
            .as_secs_f64()
            .max(f64::EPSILON);
        let delivered = tracker.delivered.load(Ordering::Relaxed);
        eprintln!(
            "produce: {sent}/{} enqueued, {delivered} delivered ({:.0}/s)",
            self.total,
            delivered as f64 / seconds
        );
    }
}
#[cfg(test)]
mod tests {
    use super::workload::wall_clock_ns;
    use super::*;
    use crate::event::{self, Action, Change, ObjectId};
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    fn spec(count: u64, objects: u64) -> WorkloadSpec {
        WorkloadSpec {
            count,
            buckets: 3,
            objects,
            copy_percent: 10,
            delete_percent: 10,
            seed: 7,
        }
    }

    fn parse_one(message: &ProducedMessage) -> Change {
        let parsed = event::parse(Some(&message.payload)).unwrap();
        assert!(parsed.skipped.is_empty());
        assert_eq!(parsed.changes.len(), 1);
        parsed.changes.into_iter().next().unwrap()
    }

    fn json(message: &ProducedMessage) -> Value {
        serde_json::from_slice(&message.payload).unwrap()
    }

    fn user_metadata(change: &Change, name: &str) -> String {
        match &change.action {
            Action::Upsert(state) => state.user_metadata.to_value()[name]
                .as_str()
                .unwrap()
                .to_string(),
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    #[test]
    fn workload_is_deterministic() {
        let first: Vec<_> = workload(&spec(500, 50)).collect();
        let second: Vec<_> = workload(&spec(500, 50)).collect();
        assert_eq!(first.len(), 500);
        assert_eq!(first, second);
        let other_seed = WorkloadSpec {
            seed: 8,
            ..spec(500, 50)
        };
        assert_ne!(first, workload(&other_seed).collect::<Vec<_>>());
    }

    #[test]
    fn a_versioned_workload_is_the_same_mix_with_versions_and_delete_markers() {
        let plain: Vec<_> = workload(&spec(2_000, 100)).collect();
        let versioned: Vec<_> = Workload::new(&spec(2_000, 100)).versioned().collect();
        let mut versions = HashSet::new();
        for (plain, versioned) in plain.iter().zip(&versioned) {
            let (a, b) = (parse_one(plain), parse_one(versioned));
            assert_eq!((&a.object, a.sequencer), (&b.object, b.sequencer));
            let version = match (&a.action, &b.action) {
                (Action::Upsert(a), Action::Upsert(b)) => {
                    assert_eq!((a.version_id.as_deref(), &a.etag), (None, &b.etag));
                    b.version_id.clone()
                }
                (
                    Action::Remove { .. },
                    Action::Remove {
                        version_id,
                        only_if_current_version,
                    },
                ) => {
                    assert_eq!(a.event_name, "s3:ObjectRemoved:Delete");
                    assert_eq!(b.event_name, "s3:ObjectRemoved:DeleteMarkerCreated");
                    assert!(
                        !only_if_current_version,
                        "a marker is not a permanent delete"
                    );
                    version_id.clone()
                }
                other => panic!("different actions: {other:?}"),
            };
            assert!(
                versions.insert(version.expect("a version id")),
                "version ids are unique"
            );
        }
        assert_eq!(versions.len(), 2_000);
    }

    #[test]
    fn keys_repeat_only_when_count_exceeds_objects() {
        let keys: HashSet<String> = workload(&spec(1000, 100)).map(|m| m.key).collect();
        assert_eq!(keys.len(), 100);
        let keys: HashSet<String> = workload(&spec(60, 100)).map(|m| m.key).collect();
        assert_eq!(keys.len(), 60);
    }

    #[test]
    fn every_message_parses_into_the_expected_action() {
        let mut exists: HashMap<String, Change> = HashMap::new();
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for message in workload(&spec(20_000, 200)) {
            let change = parse_one(&message);
            let key = format!("{}/{}", change.object.bucket, change.object.key);
            assert_eq!(key, message.key);
            let value = json(&message);
            assert_eq!(value["Key"], Value::from(key.clone()));
            assert_eq!(value["EventName"], Value::from(change.event_name.clone()));
            let previous = exists.remove(&key);
            match change.event_name.as_str() {
                "s3:ObjectCreated:Put" => {}
                "s3:ObjectCreated:Copy" => {
                    let previous = previous.as_ref().expect("a copy of an existing object");
                    let (Action::Upsert(now), Action::Upsert(before)) =
                        (&change.action, &previous.action)
                    else {
                        panic!("copy of {key}: {change:?}");
                    };
                    assert_eq!((now.size, &now.etag), (before.size, &before.etag));
                    assert_ne!(user_metadata(&change, "id"), user_metadata(previous, "id"));
                }
                "s3:ObjectRemoved:Delete" => {
                    assert!(previous.is_some(), "delete of absent {key}");
                    let expected = Action::Remove {
                        version_id: None,
                        only_if_current_version: false,
                    };
                    assert_eq!(change.action, expected);
                }
                other => panic!("unexpected event {other}"),
            }
            *counts
                .entry(if change.event_name.ends_with("Delete") {
                    "delete"
                } else if change.event_name.ends_with("Copy") {
                    "copy"
                } else {
                    "put"
                })
                .or_default() += 1;
            if let Action::Upsert(state) = &change.action {
                for name in ["api", "id", "owner"] {
                    assert!(state.user_metadata.to_value().get(name).is_some(), "{name}");
                }
                assert!(state
                    .system_metadata
                    .to_value()
                    .get("content-type")
                    .is_some());
                assert!(state.size.is_some() && state.etag.is_some());
                exists.insert(key, change);
            }
        }
        // 10% each of the 19 800 later events, give or take.
        for op in ["delete", "copy"] {
            assert!((1400..2600).contains(&counts[op]), "{op}: {counts:?}");
        }
    }

    #[test]
    fn sequencers_increase_per_object_and_match_event_times() {
        let mut last: HashMap<String, i64> = HashMap::new();
        for message in workload(&spec(5_000, 100)) {
            let change = parse_one(&message);
            if let Some(previous) = last.insert(message.key.clone(), change.sequencer) {
                assert!(change.sequencer > previous, "{}", message.key);
            }
            let millis = change.event_time.unix_timestamp_nanos() / 1_000_000;
            assert_eq!(millis, i128::from(change.sequencer) / 1_000_000);
            let value = json(&message);
            let sequencer = value["Records"][0]["s3"]["object"]["sequencer"]
                .as_str()
                .unwrap();
            assert_eq!(sequencer, format!("{:X}", change.sequencer));
            let time = value["Records"][0]["eventTime"].as_str().unwrap();
            assert_eq!(
                (time.len(), &time[19..20], &time[23..]),
                (24, ".", "Z"),
                "{time}"
            );
        }
    }

    #[test]
    fn object_names_exercise_escaping_and_round_trip() {
        let messages: Vec<_> = workload(&spec(400, 400)).collect();
        for needle in [" ", "+", "%", "é", "日本語"] {
            assert!(
                messages.iter().any(|m| m.key.contains(needle)),
                "no key with {needle:?}"
            );
        }
        for message in &messages {
            let value = json(message);
            let escaped = value["Records"][0]["s3"]["object"]["key"].as_str().unwrap();
            let (bucket, name) = message.key.split_once('/').unwrap();
            assert_eq!(escaped, event::query_escape(name));
            assert_eq!(event::query_unescape(escaped).unwrap(), name);
            assert_eq!(
                value["Records"][0]["s3"]["bucket"]["name"],
                Value::from(bucket)
            );
        }
    }

    #[test]
    fn messages_have_minio_shape() {
        let messages: Vec<_> = workload(&spec(2_000, 50)).collect();
        let put = String::from_utf8(messages[0].payload.clone()).unwrap();
        assert!(put.starts_with(r#"{"EventName":"s3:ObjectCreated:Put","Key":"loadgen-0/photos/2026/img-000000.jpg","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"","eventTime":"2026-01-01T00:00:00."#), "{put}");
        for field in [
            r#""userIdentity":{"principalId":"objmeta-loadgen"}"#,
            r#""s3SchemaVersion":"1.0","configurationId":"Config""#,
            r#""arn":"arn:aws:s3:::loadgen-0""#,
            r#""x-minio-origin-endpoint":"http://10.0.1."#,
            r#""source":{"host":"10.0.2."#,
            r#""X-Amz-Meta-Id":"1000""#,
        ] {
            assert!(put.contains(field), "{field} in {put}");
        }
        let metadata = json(&messages[0])["Records"][0]["s3"]["object"]["userMetadata"].to_string();
        assert!(
            (300..450).contains(&metadata.len()),
            "{} bytes: {metadata}",
            metadata.len()
        );
        let delete = messages
            .iter()
            .find(|m| json(m)["EventName"] == "s3:ObjectRemoved:Delete")
            .unwrap();
        let object = &json(delete)["Records"][0]["s3"]["object"];
        let fields: Vec<&str> = object
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["key", "sequencer"]);
    }

    #[test]
    fn guide_scenario_is_put_then_copy_with_new_metadata() {
        let messages = guide_scenario();
        assert_eq!(messages.len(), 2);
        let put = parse_one(&messages[0]);
        let copy = parse_one(&messages[1]);
        for (message, change) in [(&messages[0], &put), (&messages[1], &copy)] {
            assert_eq!(message.key, "test-bucket/test-file_apiid.txt");
            assert_eq!(change.object.bucket, "test-bucket");
            assert_eq!(change.object.key, "test-file_apiid.txt");
            assert_eq!(user_metadata(change, "api"), "https://api.example.com/v1");
        }
        assert_eq!(put.event_name, "s3:ObjectCreated:Put");
        assert_eq!(copy.event_name, "s3:ObjectCreated:Copy");
        assert_eq!(user_metadata(&put, "id"), "1843");
        assert_eq!(user_metadata(&copy, "id"), "1844");
        assert!(copy.sequencer > put.sequencer);
    }

    #[test]
    fn wall_clock_changes_only_times() {
        let before = wall_clock_ns();
        let fixed: Vec<_> = workload(&spec(2_000, 100)).map(|m| parse_one(&m)).collect();
        let live: Vec<_> = Workload::new(&spec(2_000, 100))
            .with_wall_clock()
            .map(|m| parse_one(&m))
            .collect();
        let after = wall_clock_ns();
        let mut last: HashMap<ObjectId, i64> = HashMap::new();
        for (fixed, live) in fixed.iter().zip(&live) {
            assert_eq!(
                (&fixed.object, &fixed.event_name),
                (&live.object, &live.event_name)
            );
            if let Action::Upsert(_) = fixed.action {
                assert_eq!(user_metadata(fixed, "id"), user_metadata(live, "id"));
            }
            assert!((before..=after).contains(&live.sequencer));
            if let Some(previous) = last.insert(live.object.clone(), live.sequencer) {
                assert!(live.sequencer > previous);
            }
        }
        assert_eq!(fixed.len(), live.len());
        let guide: Vec<_> = Workload::guide()
            .with_wall_clock()
            .map(|m| parse_one(&m))
            .collect();
        assert!(guide[1].sequencer > guide[0].sequencer);
        assert!(guide[1].sequencer <= wall_clock_ns());
        assert_eq!(user_metadata(&guide[1], "id"), "1844");
    }

    #[test]
    fn degenerate_specs() {
        assert_eq!(workload(&spec(10, 0)).count(), 0);
        let one_bucket = WorkloadSpec {
            buckets: 0,
            ..spec(10, 10)
        };
        assert!(workload(&one_bucket).all(|m| m.key.starts_with("loadgen-0/")));
        let mut workload = workload(&spec(3, 3));
        assert_eq!(workload.by_ref().count(), 3);
        assert!(workload.finish().is_ok());
        let too_much = WorkloadSpec {
            copy_percent: 60,
            delete_percent: 41,
            ..spec(1, 1)
        };
        assert!(matches!(
            too_much.validate(),
            Err(ProduceError::Percentages { .. })
        ));
        assert!(WorkloadSpec {
            copy_percent: 100,
            delete_percent: 0,
            ..spec(1, 1)
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn user_properties_override_producer_defaults() {
        let properties = vec![
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("linger.ms".to_string(), "20".to_string()),
        ];
        let config = producer_config(base_config("b:9092", &properties), &properties);
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.get("partitioner"), Some("fnv1a"));
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("linger.ms"), Some("20"));
    }

    #[test]
    fn summary_line() {
        let summary = ProduceSummary {
            sent: 100_000,
            elapsed: Duration::from_millis(1800),
        };
        assert_eq!(
            summary.describe("minio-events"),
            "produced 100000 events to minio-events in 1.8s (55556/s)"
        );
    }

    #[test]
    fn args_parse_with_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProduceArgs,
        }
        let cli = Cli::try_parse_from([
            "produce",
            "--brokers",
            "k:9092",
            "-X",
            "a=b",
            "--scenario",
            "guide",
        ])
        .unwrap();
        let args = cli.args;
        assert_eq!(
            (
                args.topic.as_str(),
                args.count,
                args.rate,
                args.buckets,
                args.objects
            ),
            ("minio-events", 1000, 0, 2, 100)
        );
        assert_eq!(
            (
                args.copy_percent,
                args.delete_percent,
                args.seed,
                args.partitions
            ),
            (10, 10, 42, 6)
        );
        assert_eq!(
            (args.scenario, args.kafka_property),
            (
                Some(Scenario::Guide),
                vec![("a".to_string(), "b".to_string())]
            )
        );
        assert!(
            Cli::try_parse_from(["produce", "--brokers", "k", "--copy-percent", "101"]).is_err()
        );
        assert!(Cli::try_parse_from(["produce", "--brokers", "k", "--objects", "0"]).is_err());
    }

    /// Sarama's `NewHashPartitioner`: FNV-1a 32, as a signed integer made non-negative.
    fn sarama_partition(key: &[u8], partitions: i32) -> i32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in key {
            hash = (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
        }
        (hash as i32).wrapping_abs() % partitions
    }

    /// Publishes to the broker in `KAFKA_BROKERS` (e.g. `eval "$(scripts/services env)"`), reads
    /// everything back, and checks payloads and MinIO-compatible partitioning.
    #[tokio::test]
    #[ignore = "needs a Kafka broker in KAFKA_BROKERS"]
    async fn publishes_to_a_real_broker() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS");
        let topic = format!("objmeta-produce-test-{}", std::process::id());
        let args = ProduceArgs {
            brokers: brokers.clone(),
            topic: topic.clone(),
            count: 3000,
            rate: 0,
            buckets: 2,
            objects: 300,
            copy_percent: 10,
            delete_percent: 10,
            versioned: false,
            seed: 42,
            partitions: 4,
            scenario: None,
            kafka_property: vec![("client.id".to_string(), "objmeta-produce-test".to_string())],
        };
        let summary = run(args.clone()).await.unwrap();
        assert_eq!(summary.sent, 3000);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &topic)
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let expected: Vec<ProducedMessage> = workload(&args.workload_spec()).collect();
        let mut seen = Vec::new();
        let mut newest: HashMap<String, i64> = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < expected.len() && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                let key = message.key().unwrap().to_vec();
                assert_eq!(message.partition(), sarama_partition(&key, 4));
                let message = ProducedMessage {
                    key: String::from_utf8(key).unwrap(),
                    payload: message.payload().unwrap().to_vec(),
                };
                // One partition per object keeps its events in order.
                let sequencer = parse_one(&message).sequencer;
                if let Some(previous) = newest.insert(message.key.clone(), sequencer) {
                    assert!(sequencer > previous, "{}", message.key);
                }
                seen.push(message);
            }
        }
        // Run used the wall clock: compare everything but times and sequencers.
        let summary = |messages: Vec<ProducedMessage>| {
            let mut rows: Vec<(String, String, Option<String>)> = messages
                .iter()
                .map(|m| {
                    let change = parse_one(m);
                    let id = match &change.action {
                        Action::Upsert(_) => Some(user_metadata(&change, "id").to_string()),
                        Action::Remove { .. } => None,
                    };
                    (m.key.clone(), change.event_name, id)
                })
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(summary(seen), summary(expected));
        // A second run leaves the existing topic alone and publishes again.
        let rerun = ProduceArgs {
            scenario: Some(Scenario::Guide),
            rate: 100,
            ..args
        };
        assert_eq!(run(rerun).await.unwrap().sent, 2);
    }
}
