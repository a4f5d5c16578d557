//! Shared test support: the real Kafka broker and PostgreSQL started by
//! `scripts/services`, a unique topic, group and schema per test, a
//! producer, the objmeta service run in-process or as the built binary,
//! and waits with timeouts.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod bucket;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use objmeta::config::{Cli, Command as CliCommand, ListingConfig, RunConfig};
use objmeta::event::{self, Action, Change, ObjectId};

/// Where the test services are.
#[derive(Clone, Debug)]
pub struct Services {
    pub brokers: String,
    pub database_url: String,
}

/// The services from `KAFKA_BROKERS`/`DATABASE_URL`, or started with
/// `scripts/services up` when those are not set.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        if let (Ok(brokers), Ok(database_url)) = (
            std::env::var("KAFKA_BROKERS"),
            std::env::var("DATABASE_URL"),
        ) {
            return Services {
                brokers,
                database_url,
            };
        }
        let value = services_started("up");
        Services {
            brokers: value("KAFKA_BROKERS"),
            database_url: value("DATABASE_URL"),
        }
    })
}

/// Where versitygw, the real S3 server of the tests, answers.
#[derive(Clone, Debug)]
pub struct S3Service {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

/// versitygw from `S3_ENDPOINT`/`S3_REGION`/`S3_ACCESS_KEY`/`S3_SECRET_KEY`, or started with
/// `scripts/services s3-up` (once per test binary) when `S3_ENDPOINT` is not set.
pub fn s3() -> &'static S3Service {
    static S3: OnceLock<S3Service> = OnceLock::new();
    S3.get_or_init(|| {
        let from_env = |name: &str| std::env::var(name).ok();
        let value: Box<dyn Fn(&str) -> String> = match from_env("S3_ENDPOINT") {
            Some(_) => Box::new(move |name: &str| {
                from_env(name).unwrap_or_else(|| panic!("S3_ENDPOINT is set but {name} is not"))
            }),
            None => Box::new(services_started("s3-up")),
        };
        S3Service {
            endpoint: value("S3_ENDPOINT"),
            region: value("S3_REGION"),
            access_key: value("S3_ACCESS_KEY"),
            secret_key: value("S3_SECRET_KEY"),
        }
    })
}

/// Runs `scripts/services <command>`, then reads `scripts/services env`: the returned
/// function gives one of its variables.
fn services_started(command: &str) -> impl Fn(&str) -> String {
    let script = repo_root().join("scripts/services");
    let up = Command::new(&script)
        .arg(command)
        .status()
        .unwrap_or_else(|e| panic!("run scripts/services {command}: {e}"));
    assert!(up.success(), "scripts/services {command} failed");
    let env = Command::new(&script)
        .arg("env")
        .output()
        .expect("run scripts/services env");
    let text = String::from_utf8_lossy(&env.stdout).into_owned();
    move |name: &str| {
        text.lines()
            .find_map(|line| {
                line.trim_start_matches("export ")
                    .strip_prefix(&format!("{name}="))
            })
            .unwrap_or_else(|| panic!("{name} missing from scripts/services env"))
            .to_string()
    }
}

/// With `TEST_LOG` set (e.g. `TEST_LOG=objmeta=debug`), in-process objmeta
/// logs to the test output.
fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The S3 flags of objmeta for the server at `endpoint`: the tests' region and access key,
/// and `secret_key` (the tests' own, or a wrong one).
pub fn s3_flags(endpoint: &str, secret_key: &str) -> Vec<String> {
    let s3 = s3();
    [
        "--s3-endpoint",
        endpoint,
        "--s3-region",
        &s3.region,
        "--s3-access-key",
        &s3.access_key,
        "--s3-secret-key",
        secret_key,
    ]
    .map(String::from)
    .to_vec()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one listing in-process to its end; its summary, also printed.
pub async fn run_listing(
    kind: objmeta::listing::Kind,
    config: &ListingConfig,
) -> objmeta::listing::Summary {
    let mut summaries = objmeta::read_buckets(kind, config, CancellationToken::new())
        .await
        .expect("listing runs");
    assert_eq!(summaries.len(), 1, "one bucket, one summary");
    let summary = summaries.remove(0);
    println!("{summary:?}");
    summary
}

/// A free TCP port on the loopback interface for an HTTP server.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One test's own topic, consumer group and database schema.
#[derive(Clone)]
pub struct TestBed {
    pub name: String,
    pub topic: String,
    pub group: String,
    pub schema: String,
    pub partitions: i32,
    pub services: Services,
    producer: FutureProducer,
}

impl TestBed {
    pub async fn new(name: &str, partitions: i32) -> TestBed {
        TestBed::on(services().clone(), name, partitions, &[]).await
    }

    /// A test bed on the given services (e.g. a private instance), its
    /// topic created with extra topic-level settings.
    pub async fn on(
        services: Services,
        name: &str,
        partitions: i32,
        topic_config: &[(&str, &str)],
    ) -> TestBed {
        init_logging();
        let unique = format!("{name}_{}_{}", std::process::id(), rand::random::<u32>());
        let bed = TestBed {
            name: name.to_string(),
            topic: format!("t_{unique}"),
            group: format!("g_{unique}"),
            schema: format!("s_{unique}").to_lowercase(),
            partitions,
            producer: producer(&services.brokers),
            services,
        };
        bed.create_topic(topic_config).await;
        bed
    }

    async fn create_topic(&self, topic_config: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.services.brokers)
            .create()
            .expect("admin client");
        let mut topic = NewTopic::new(&self.topic, self.partitions, TopicReplication::Fixed(1));
        for (key, value) in topic_config {
            topic = topic.set(key, value);
        }
        let results = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .expect("create topic");
        for result in results {
            result.expect("topic created");
        }
    }

    /// `objmeta run` configuration for this test bed, as a user would give it.
    pub fn run_config(&self, http_port: u16, extra: &[&str]) -> RunConfig {
        let http_addr = format!("127.0.0.1:{http_port}");
        self.run_config_at(&self.services.database_url, &http_addr, extra)
    }

    /// The same on another database URL and HTTP address (a refused role,
    /// a database nobody answers on).
    pub fn run_config_at(&self, database_url: &str, http_addr: &str, extra: &[&str]) -> RunConfig {
        let mut args = vec![
            "objmeta",
            "run",
            "--brokers",
            &self.services.brokers,
            "--topic",
            &self.topic,
            "--group-id",
            &self.group,
            "--database-url",
            database_url,
            "--database-schema",
            &self.schema,
            "--http-addr",
            http_addr,
        ];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args)
            .expect("valid run arguments")
            .command
        {
            CliCommand::Run(config) => *config,
            other => panic!("expected run, got {other:?}"),
        }
    }

    /// `objmeta backfill|reconcile --bucket <bucket> …` on this bed's schema, against the
    /// S3 server at `endpoint` with the tests' credentials, as a user would give it.
    pub fn listing_config(
        &self,
        command: &str,
        endpoint: &str,
        bucket: &str,
        extra: &[&str],
    ) -> ListingConfig {
        let flags = s3_flags(endpoint, &s3().secret_key);
        let mut args = vec![
            "objmeta",
            command,
            "--bucket",
            bucket,
            "--database-url",
            &self.services.database_url,
            "--database-schema",
            &self.schema,
            "--progress",
            "off",
        ];
        args.extend(flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args)
            .expect("valid listing arguments")
            .command
        {
            CliCommand::Backfill(config) | CliCommand::Reconcile(config) => *config,
            other => panic!("expected a listing command, got {other:?}"),
        }
    }

    /// The live rows of `bucket`, as users query them.
    pub async fn live_rows(&self, bucket: &str) -> BTreeMap<String, bucket::Seen> {
        self.db()
            .await
            .query(
                "SELECT key, etag, size, user_metadata FROM current_objects WHERE bucket = $1",
                &[&bucket],
            )
            .await
            .expect("read current_objects")
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect()
    }

    /// Runs objmeta in-process until the returned handle is stopped.
    pub fn start(&self, extra: &[&str]) -> InProcess {
        let http_port = free_port();
        let config = self.run_config(http_port, extra);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(objmeta::run(config, shutdown.clone()));
        InProcess {
            shutdown,
            task,
            http_port,
        }
    }

    /// Runs the built `objmeta run` binary, logging to a file.
    pub fn spawn_binary(&self, extra: &[&str]) -> Binary {
        self.spawn_binary_env(extra, &[])
    }

    /// Every dead-letter row as users see it (`dead_letters`, the records
    /// table included), by offset and record.
    pub async fn dead_letter_records(&self) -> Vec<DeadLetterRecord> {
        self.db()
            .await
            .query(
                r#"SELECT "offset", record, message_key, payload, reason FROM dead_letters
                   ORDER BY "offset", record"#,
                &[],
            )
            .await
            .expect("read dead_letters")
            .iter()
            .map(|r| DeadLetterRecord {
                offset: r.get(0),
                record: r.get(1),
                message_key: r.get(2),
                payload: r.get(3),
                reason: r.get(4),
            })
            .collect()
    }

    /// The dead-letter rows, by offset: offset, message key, payload, reason.
    pub async fn dead_letters(&self) -> Vec<DeadLetterRow> {
        self.dead_letter_records()
            .await
            .into_iter()
            .map(|d| (d.offset, d.message_key, d.payload, d.reason))
            .collect()
    }

    /// Publishes `(message key, payload)` pairs in order; keys choose the
    /// partition with the FNV-1a partitioner, as MinIO's producer does.
    pub async fn publish(&self, messages: &[(String, Vec<u8>)]) {
        self.publish_with(messages, |_| None).await;
    }

    /// Publishes to explicit partitions, where `partition_of` says so.
    pub async fn publish_with(
        &self,
        messages: &[(String, Vec<u8>)],
        partition_of: impl Fn(usize) -> Option<i32>,
    ) {
        // `send_result` enqueues at once; awaiting `send` one by one would
        // wait out the linger time for every message.
        let mut pending = Vec::with_capacity(messages.len());
        for (index, (key, payload)) in messages.iter().enumerate() {
            let mut record = FutureRecord::to(&self.topic)
                .key(key.as_bytes())
                .payload(payload.as_slice());
            if let Some(partition) = partition_of(index) {
                record = record.partition(partition);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break pending.push(delivery),
                    Err((_queue_full, returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        for delivery in pending {
            delivery
                .await
                .expect("delivery reported")
                .expect("delivered");
        }
    }

    /// Publishes a raw payload (or a null value) to one partition.
    pub async fn publish_raw(&self, partition: i32, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).partition(partition);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("delivered");
    }

    /// A connection to the database with this test's schema on the path.
    pub async fn db(&self) -> Client {
        connect_schema(&self.services.database_url, &self.schema).await
    }

    /// Committed offsets of the test's group, per partition (-1 when none).
    pub fn committed_offsets(&self) -> Vec<i64> {
        let reader = OffsetReader::new(self);
        // A fresh broker answers NotCoordinator / CoordinatorLoadInProgress
        // while it sets up the offsets topic: ask again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reader.committed() {
                Ok(committed) => return committed,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("committed offsets not available yet: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("committed offsets: {e}"),
            }
        }
    }

    /// Waits until the group's committed offsets add up to `total`.
    pub async fn wait_committed(&self, total: i64, timeout: Duration) {
        wait_until(timeout, "committed offsets", || async {
            let sum: i64 = self.committed_offsets().iter().map(|o| (*o).max(0)).sum();
            (sum == total).then_some(())
        })
        .await;
    }

    /// Object rows as comparable states, keyed by object.
    pub async fn table(&self) -> BTreeMap<ObjectId, RowState> {
        read_table(&self.db().await).await
    }

    /// Waits until the table holds `rows` object rows.
    pub async fn wait_rows(&self, rows: i64, timeout: Duration) {
        let client = self.db().await;
        wait_until(timeout, &format!("{rows} object rows"), || async {
            let count: i64 = client
                .query_one("SELECT count(*) FROM object_metadata", &[])
                .await
                .ok()?
                .get(0);
            (count == rows).then_some(())
        })
        .await;
    }

    /// Reads one metric value from an objmeta `/metrics` endpoint.
    pub async fn metric(http_port: u16, series: &str) -> Option<f64> {
        let body = http_get(http_port, "/metrics").await?.1;
        body.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }
}

/// A minimal HTTP/1.1 GET over a raw socket: status code and body.
/// Reads a test group's committed offsets; one client for many reads.
pub struct OffsetReader {
    consumer: BaseConsumer,
    list: TopicPartitionList,
    topic: String,
    partitions: i32,
}

impl OffsetReader {
    pub fn new(bed: &TestBed) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bed.services.brokers)
            .set("group.id", &bed.group)
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..bed.partitions {
            list.add_partition(&bed.topic, partition);
        }
        OffsetReader {
            consumer,
            list,
            topic: bed.topic.clone(),
            partitions: bed.partitions,
        }
    }

    /// Per partition, the committed offset (-1 when none).
    pub fn committed(&self) -> rdkafka::error::KafkaResult<Vec<i64>> {
        let committed = self
            .consumer
            .committed_offsets(self.list.clone(), Duration::from_secs(10))?;
        Ok((0..self.partitions)
            .map(
                |p| match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect())
    }
}

/// A connection to the database with `schema` on the path.
pub async fn connect_schema(url: &str, schema: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path = {schema}"))
        .await
        .expect("search path");
    client
}

/// The object rows of the schema on `client`'s search path, as comparable
/// states keyed by object.
pub async fn read_table(client: &Client) -> BTreeMap<ObjectId, RowState> {
    let rows = client
        .query(
            "SELECT bucket, key, sequencer, NOT live, version_id, size, etag, \
             content_type, user_metadata, system_metadata, event_name FROM object_metadata",
            &[],
        )
        .await
        .expect("read object_metadata");
    rows.iter()
        .map(|row| {
            let object = ObjectId {
                bucket: row.get(0),
                key: row.get(1),
            };
            let state = RowState {
                sequencer: row.get(2),
                deleted: row.get(3),
                version_id: row.get(4),
                size: row.get(5),
                etag: row.get(6),
                content_type: row.get(7),
                user_metadata: row.get(8),
                system_metadata: row.get(9),
                event_name: row.get(10),
            };
            (object, state)
        })
        .collect()
}

pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "fnv1a")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// objmeta running inside the test process.
pub struct InProcess {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), objmeta::error::Error>>,
    pub http_port: u16,
}

impl InProcess {
    /// Graceful stop, as on SIGTERM; returns what `run()` returned.
    pub async fn stop(self) -> Result<(), objmeta::error::Error> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("objmeta stops within 60 s")
            .expect("objmeta task did not panic")
    }
}

/// The objmeta binary running as a child process.
pub struct Binary {
    pub child: Child,
    pub http_port: u16,
    log: tempfile::NamedTempFile,
}

impl Binary {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A dead_letters row: offset, message key, payload, reason.
pub type DeadLetterRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>, String);

/// A dead-letter row with its record index.
#[derive(Debug)]
pub struct DeadLetterRecord {
    pub offset: i64,
    pub record: i32,
    pub message_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// A row of object_metadata, in a form tests can compare.
#[derive(Clone, Debug, PartialEq)]
pub struct RowState {
    /// `None` for an object of which only deletes of versions were seen.
    pub sequencer: Option<i64>,
    /// Not live: removed, its current version deleted, or never seen live.
    pub deleted: bool,
    pub version_id: Option<String>,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub user_metadata: serde_json::Value,
    pub system_metadata: serde_json::Value,
    pub event_name: Option<String>,
}

impl RowState {
    /// The row a change leaves behind when it is the object's current
    /// state; `deleted` says whether a delete of its version ended it.
    pub fn of(change: &Change, version_deleted: bool) -> RowState {
        let empty = serde_json::Value::Object(serde_json::Map::new());
        match &change.action {
            Action::Upsert(state) => RowState {
                sequencer: Some(change.sequencer),
                deleted: version_deleted,
                version_id: state.version_id.clone(),
                size: state.size,
                etag: state.etag.clone(),
                content_type: state.content_type.clone(),
                user_metadata: state.user_metadata.to_value(),
                system_metadata: state.system_metadata.to_value(),
                event_name: Some(change.event_name.clone()),
            },
            Action::Remove { version_id, .. } => RowState {
                sequencer: Some(change.sequencer),
                deleted: true,
                version_id: version_id.clone(),
                size: None,
                etag: None,
                content_type: None,
                user_metadata: empty.clone(),
                system_metadata: empty,
                event_name: Some(change.event_name.clone()),
            },
        }
    }

    /// An object of which only deletes of single versions were seen.
    pub fn never_live() -> RowState {
        let empty = serde_json::Value::Object(serde_json::Map::new());
        RowState {
            sequencer: None,
            deleted: true,
            version_id: None,
            size: None,
            etag: None,
            content_type: None,
            user_metadata: empty.clone(),
            system_metadata: empty,
            event_name: None,
        }
    }
}

/// A change and its position in the source: (Kafka partition, offset).
pub type Positioned = (Change, (i32, i64));

/// The expected table after the given changes, each with its position in
/// the source (what orders equal sequencers: the Kafka offset, or for
/// messages of one partition their publishing order).
///
/// The documented rules (docs/versions.md), written again for the tests and
/// independent of objmeta's code. Changes are ordered by (sequencer,
/// removal before creation, position). Each version of an object (its
/// version id, `null` without one) has a state, its greatest creation,
/// delete marker or removal naming it, and may have a permanent delete, its
/// greatest `ObjectRemoved:Delete` with that version id; the version is gone
/// when that delete is greater than its state (or it has no state). The
/// object's row is its greatest version that is not gone (live unless that
/// is a removal); when every version is gone, the greatest of them, not
/// live; with only permanent deletes, a row without a state. The result
/// depends on the set of changes only, never on their order.
pub fn oracle_of(changes: &[Positioned]) -> BTreeMap<ObjectId, RowState> {
    type Rank = (i64, bool, i32, i64);
    fn rank(change: &Change, position: (i32, i64)) -> Rank {
        let removal = matches!(change.action, Action::Remove { .. });
        (change.sequencer, removal, position.0, position.1)
    }
    fn permanent_delete(change: &Change) -> bool {
        // Which events are permanent deletes is the event model's rule (`removal`), not this
        // oracle's: Ceph's noncurrent expirations are some too.
        objmeta::batch::deletes_one_version(change)
    }
    fn version(change: &Change) -> String {
        let id = match &change.action {
            Action::Upsert(state) => state.version_id.as_deref(),
            Action::Remove { version_id, .. } => version_id.as_deref(),
        };
        id.unwrap_or("null").to_string()
    }
    #[derive(Default)]
    struct Version<'a> {
        state: Option<(&'a Change, Rank)>,
        delete: Option<Rank>,
    }
    let mut objects: BTreeMap<ObjectId, BTreeMap<String, Version>> = BTreeMap::new();
    for (change, position) in changes {
        let entry = objects
            .entry(change.object.clone())
            .or_default()
            .entry(version(change))
            .or_default();
        let r = rank(change, *position);
        if permanent_delete(change) {
            entry.delete = entry.delete.max(Some(r));
        } else if entry.state.is_none_or(|(_, old)| r >= old) {
            entry.state = Some((change, r));
        }
    }
    objects
        .into_iter()
        .map(|(id, versions)| {
            let states = versions.iter().filter_map(|(name, v)| {
                let (change, r) = v.state?;
                let gone = v.delete.is_some_and(|d| d > r);
                Some((!gone, r, name, change))
            });
            // Not gone first, then the greatest rank, then the version id (as the SQL's ORDER BY).
            let row = match states.max_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2))) {
                Some((true, _, _, change)) => RowState::of(change, false),
                Some((false, _, _, change)) => RowState::of(change, true),
                None => RowState::never_live(),
            };
            (id, row)
        })
        .collect()
}

/// The expected table after the given payloads, published in this order to
/// partitions keyed by object (so their order is each object's position).
pub fn oracle<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<ObjectId, RowState> {
    let mut changes = Vec::new();
    for (index, payload) in payloads.into_iter().enumerate() {
        let Ok(parsed) = event::parse(Some(payload)) else {
            continue;
        };
        for change in parsed.changes {
            changes.push((change, (0, index as i64)));
        }
    }
    oracle_of(&changes)
}

/// Compares the table with the oracle and describes every difference.
pub fn differences(
    expected: &BTreeMap<ObjectId, RowState>,
    actual: &BTreeMap<ObjectId, RowState>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, want) in expected {
        match actual.get(id) {
            None => out.push(format!("missing {id:?}")),
            Some(got) if got != want => {
                out.push(format!("wrong {id:?}: want {want:?}, got {got:?}"))
            }
            Some(_) => {}
        }
    }
    for id in actual.keys().filter(|id| !expected.contains_key(id)) {
        out.push(format!("extra {id:?}"));
    }
    out
}

/// Fails with the first differences when the table is not the oracle's.
pub fn assert_table_matches(
    expected: &BTreeMap<ObjectId, RowState>,
    actual: &BTreeMap<ObjectId, RowState>,
) {
    let diff = differences(expected, actual);
    assert!(
        diff.is_empty(),
        "{} differences, first: {:?}",
        diff.len(),
        &diff[..diff.len().min(5)]
    );
}

/// Reads a fixture message from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures").join(name)).expect("fixture")
}

/// The Kafka message key MinIO uses: `<bucket>/<raw object name>`.
pub fn message_key(payload: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(payload).expect("fixture is json");
    value["Key"].as_str().expect("envelope Key").to_string()
}

/// Builds one message exactly in MinIO's shape, for hand-written sequences.
/// `metadata` are MinIO's stored entries (e.g. `X-Amz-Meta-Id`); removal
/// events carry none, as MinIO sends them.
pub fn minio_message(
    event_name: &str,
    bucket: &str,
    raw_key: &str,
    sequencer: u64,
    version_id: Option<&str>,
    metadata: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let removal = event_name.starts_with("s3:ObjectRemoved:");
    let mut object = serde_json::json!({
        "key": event::query_escape(raw_key),
        "sequencer": format!("{sequencer:X}"),
    });
    if !removal {
        object["size"] = 1024.into();
        object["eTag"] = format!("{sequencer:032x}").into();
        object["contentType"] = "text/plain".into();
        let entries: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).into()))
            .chain([("content-type".to_string(), "text/plain".into())])
            .collect();
        object["userMetadata"] = entries.into();
    }
    if let Some(version_id) = version_id {
        object["versionId"] = version_id.into();
    }
    let nanos = i64::try_from(sequencer).expect("sequencer fits i64");
    let event_time = objmeta::produce::event_time(nanos).expect("event time");
    let key = format!("{bucket}/{raw_key}");
    let payload = serde_json::json!({
        "EventName": event_name,
        "Key": key,
        "Records": [{
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": event_time,
            "eventName": event_name,
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "17A0C6E9B0E1A0F2", "x-minio-origin-endpoint": "http://127.0.0.1:9000"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"}, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": object,
            },
            "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
        }],
    });
    (key, serde_json::to_vec(&payload).expect("json"))
}

/// A private Kafka + PostgreSQL pair (`OBJMETA_SERVICES_INSTANCE=<name>
/// scripts/services`), for tests that stop, restart or reconfigure a
/// service: they must not disturb tests running on the shared services.
/// Stopped again when dropped (its data is kept for the next run).
pub struct PrivateServices {
    pub name: String,
    pub services: Services,
    /// Everything `scripts/services env` printed for the instance.
    pub env: BTreeMap<String, String>,
}

impl PrivateServices {
    pub fn start(name: &str) -> PrivateServices {
        let script = repo_root().join("scripts/services");
        let up = Command::new(&script)
            .arg("up")
            .env("OBJMETA_SERVICES_INSTANCE", name)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/services up");
        assert!(up.success(), "scripts/services up ({name}) failed");
        let output = Command::new(&script)
            .arg("env")
            .env("OBJMETA_SERVICES_INSTANCE", name)
            .output()
            .expect("run scripts/services env");
        assert!(output.status.success(), "scripts/services env failed");
        let env: BTreeMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        PrivateServices {
            name: name.to_string(),
            services: Services {
                brokers: env["KAFKA_BROKERS"].clone(),
                database_url: env["DATABASE_URL"].clone(),
            },
            env,
        }
    }

    /// Runs `scripts/services <args>` on this instance; panics on failure.
    pub fn ctl(&self, args: &[&str]) {
        let status = Command::new(repo_root().join("scripts/services"))
            .args(args)
            .env("OBJMETA_SERVICES_INSTANCE", &self.name)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/services");
        assert!(status.success(), "scripts/services {args:?} failed");
    }

    /// `ctl` on a blocking thread, for use inside async tests.
    pub async fn ctl_async(&self, args: &[&str]) {
        let name = self.name.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let status = Command::new(repo_root().join("scripts/services"))
                .args(&args)
                .env("OBJMETA_SERVICES_INSTANCE", &name)
                .stdout(Stdio::null())
                .status()
                .expect("run scripts/services");
            assert!(status.success(), "scripts/services {args:?} failed");
        })
        .await
        .expect("scripts/services thread");
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from scripts/services env"))
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/services"))
            .arg("down")
            .env("OBJMETA_SERVICES_INSTANCE", &self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl TestBed {
    /// Like `spawn_binary`, with extra environment (overriding the bed's and the test
    /// process's); an empty value removes the variable.
    pub fn spawn_binary_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Binary {
        self.spawn_program(
            std::path::Path::new(env!("CARGO_BIN_EXE_objmeta")),
            extra,
            env,
        )
    }

    /// `program run` (an objmeta binary: this build's, or another version's) on this bed.
    pub fn spawn_program(
        &self,
        program: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let http_port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = Command::new(program);
        command
            .arg("run")
            .args(extra)
            .env("KAFKA_BROKERS", &self.services.brokers)
            .env("KAFKA_TOPIC", &self.topic)
            .env("KAFKA_GROUP_ID", &self.group)
            .env("DATABASE_URL", &self.services.database_url)
            .env("DATABASE_SCHEMA", &self.schema)
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("LOG_LEVEL", "info");
        for (key, value) in env {
            match value.is_empty() {
                true => command.env_remove(key),
                false => command.env(key, value),
            };
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file handle"))
            .spawn()
            .expect("spawn objmeta");
        Binary {
            child,
            http_port,
            log,
        }
    }

    /// The end (high watermark) offset of every partition.
    pub fn end_offsets(&self) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.services.brokers)
            .create()
            .expect("watermark reader");
        (0..self.partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// Sum of every series of a metric (all label values).
    pub async fn metric_sum(http_port: u16, name: &str) -> Option<f64> {
        let body = http_get(http_port, "/metrics").await?.1;
        Some(
            body.lines()
                .filter(|line| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Publishes with a producer allowing messages up to `max_bytes`.
    pub async fn publish_large(
        &self,
        partition: i32,
        key: &[u8],
        payload: &[u8],
        max_bytes: usize,
    ) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.services.brokers)
            .set("message.max.bytes", max_bytes.to_string())
            .create()
            .expect("producer");
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(key)
            .payload(payload);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("delivered");
    }
}

impl Binary {
    /// Sends SIGTERM and waits (at most `timeout`) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return status;
            }
            if Instant::now() > deadline {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "objmeta did not exit within {timeout:?} after SIGTERM; log tail:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Messages of a generated workload made hostile to ordering: about
/// `duplicate_percent` of them sent twice, and every window of `window`
/// messages shuffled (so events of one object arrive out of order).
pub fn hostile_stream(
    messages: Vec<(String, Vec<u8>)>,
    duplicate_percent: u32,
    window: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(messages.len() * (100 + duplicate_percent as usize) / 100);
    for message in messages {
        if rng.random_range(0..100) < duplicate_percent {
            out.push(message.clone());
        }
        out.push(message);
    }
    for chunk in out.chunks_mut(window.max(1)) {
        chunk.shuffle(&mut rng);
    }
    out
}
