//! Command line and environment configuration: the only module that reads
//! environment variables. Everything below `run()` receives typed values.

use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::event::{Decoding, Enrich, SourceChoice, Store};
use crate::listing::Progress;
use crate::produce::ProduceArgs;
use crate::s3::S3Config;

/// Keeps a PostgreSQL table of every MinIO object's current metadata, fed by
/// MinIO bucket notifications on Kafka.
#[derive(Debug, Parser)]
#[command(name = "objmeta", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume MinIO events from Kafka and keep the object_metadata table current.
    Run(Box<RunConfig>),
    /// Apply the SQL migrations and exit.
    Migrate(DatabaseConfig),
    /// Publish MinIO-format events to a topic (demo, tests, benchmarks).
    Produce(Box<ProduceArgs>),
    /// Read buckets through the S3 API and write every object's row (resumable).
    Backfill(Box<ListingConfig>),
    /// A backfill that also removes the rows of objects no longer in the bucket,
    /// and reports the drift it found.
    Reconcile(Box<ListingConfig>),
}

/// Everything `objmeta backfill` and `objmeta reconcile` need.
#[derive(Clone, Debug, Args)]
pub struct ListingConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub s3: S3Config,
    #[command(flatten)]
    pub history: HistoryConfig,
    /// Bucket to read; repeat the flag for several (read one after the other).
    #[arg(long = "bucket", value_name = "NAME", required = true)]
    pub buckets: Vec<String>,
    /// Only objects whose key starts with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// HeadObject requests in flight at once (when the listing itself carries
    /// no metadata, as only MinIO's does).
    #[arg(long, env = "LISTING_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Rows written per transaction at most.
    #[arg(long, env = "LISTING_BATCH_ROWS", default_value_t = 500)]
    pub batch_rows: usize,
    /// Start over instead of resuming where an interrupted run of the same
    /// command, bucket and prefix stopped.
    #[arg(long)]
    pub restart: bool,
    /// How long one S3 request keeps being retried after throttling or a
    /// connection error before the listing stops (and exits non-zero).
    #[arg(long, env = "S3_RETRY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub s3_retry_timeout: Duration,
    /// Progress on stderr: a live bar on a terminal, a line every 10 s otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: Progress,
    /// Format of the summary printed on stdout at the end.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    /// One JSON object per bucket.
    Json,
}

impl ListingConfig {
    /// Cross-field checks that clap cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        if self.concurrency == 0 {
            return Err(Error::Config(
                "--concurrency (LISTING_CONCURRENCY) must be at least 1".into(),
            ));
        }
        if self.batch_rows == 0 {
            return Err(Error::Config(
                "--batch-rows (LISTING_BATCH_ROWS) must be at least 1".into(),
            ));
        }
        if self.buckets.iter().any(String::is_empty) {
            return Err(Error::Config("--bucket must not be empty".into()));
        }
        Ok(())
    }
}

/// Everything `objmeta run` needs.
#[derive(Clone, Debug, Args)]
pub struct RunConfig {
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub history: HistoryConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9187")]
    pub http_addr: SocketAddr,
    /// Flush a batch once it holds this many distinct objects (plus dead letters).
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 2500)]
    pub batch_max_rows: usize,
    /// Flush a batch once its oldest message has waited this long (e.g. `50ms`, `1s`).
    #[arg(long, env = "BATCH_MAX_AGE", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub batch_max_age: Duration,
    /// Batches written at the same time, each on its own connection; partitions are
    /// spread over them. Needs DATABASE_POOL_SIZE of at least this plus one.
    #[arg(long, env = "WRITE_CONCURRENCY", default_value_t = 2)]
    pub write_concurrency: usize,
    /// Longest wait between two retries of a batch while the database is unavailable.
    #[arg(long, env = "RETRY_MAX_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max_backoff: Duration,
    /// /healthz fails when the main loop has made no progress for this long.
    #[arg(long, env = "HEALTH_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_stall_timeout: Duration,
    /// Most bytes of messages held at once between the broker and the database
    /// (librdkafka's prefetch queue gets 1/16 of it, the rest covers parsed messages,
    /// batches, writes in flight and dead letters with their full payloads). A slow
    /// database then delays reading instead of growing memory. Takes B, KiB, MiB, GiB.
    #[arg(long, env = "MEMORY_BUDGET", default_value = "16MiB", value_parser = parse_bytes)]
    pub memory_budget: usize,
    /// At shutdown, how long to keep trying to write what was consumed.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// The store that publishes to the topic (MinIO, RustFS, Ceph RGW, versitygw, AWS via
    /// SQS/SNS or EventBridge): `auto` recognises each message's by its envelope and
    /// `eventSource`; naming one reads every message by that store's rules.
    #[arg(long, env = "EVENT_SOURCE", default_value = "auto", value_parser = parse_source())]
    pub source: SourceChoice,
    /// When to read an object's state with HeadObject instead of writing its event's:
    /// `auto` where the store's events carry no user metadata or no usable order
    /// (versitygw, AWS), `always`, or `never`. Needs --s3-endpoint when it reads.
    #[arg(long, env = "ENRICH", value_enum, default_value = "auto")]
    pub enrich: Enrich,
    /// HeadObject requests in flight for enrichment, shared by all write lanes.
    #[arg(long, env = "ENRICH_CONCURRENCY", default_value_t = 32)]
    pub enrich_concurrency: usize,
    /// S3 connection, for enrichment and the periodic reconcile.
    #[command(flatten)]
    pub s3: S3Config,
    /// Buckets to reconcile periodically (see --reconcile-every); repeat the flag,
    /// or separate them with `,` in the environment.
    #[arg(
        long = "reconcile-bucket",
        env = "RECONCILE_BUCKETS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub reconcile_buckets: Vec<String>,
    /// How often to reconcile those buckets (e.g. `6h`): by one replica at a
    /// time (an advisory lock), beside consumption and never blocking it.
    #[arg(long, env = "RECONCILE_EVERY", value_parser = humantime::parse_duration)]
    pub reconcile_every: Option<Duration>,
    /// Only reconcile objects whose key starts with this prefix.
    #[arg(long, env = "RECONCILE_PREFIX", default_value = "")]
    pub reconcile_prefix: String,
    /// HeadObject requests in flight during a periodic reconcile (low: it
    /// shares the replica with consumption).
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub reconcile_concurrency: usize,
}

/// What objmeta keeps besides the current rows (sql/0005).
#[derive(Clone, Debug, Args)]
pub struct HistoryConfig {
    /// Append every change received (events and reads of the bucket) to object_history,
    /// or not: `on`, `off`.
    #[arg(long, env = "HISTORY", value_enum, default_value = "on")]
    pub history: Switch,
}

/// How long rows that no longer describe a current object are kept (`objmeta run`).
#[derive(Clone, Debug, Args)]
pub struct RetentionConfig {
    /// Purge objects that are not current (tombstones) and permanently deleted versions once
    /// unchanged this long (e.g. `30d`); unset: keep them. Must exceed the topic's retention
    /// plus the worst consumer lag, or an older event could revive a purged object.
    #[arg(long, env = "TOMBSTONE_RETENTION", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Option<Duration>,
    /// Purge history rows whose event is older than this (e.g. `90d`); unset: keep them.
    #[arg(long, env = "HISTORY_RETENTION", value_parser = humantime::parse_duration)]
    pub history_retention: Option<Duration>,
    /// How often one replica purges (and refreshes the table-row gauges).
    #[arg(long, env = "PURGE_EVERY", default_value = "10m", value_parser = humantime::parse_duration)]
    pub purge_every: Duration,
}

impl HistoryConfig {
    pub fn keeps(&self) -> bool {
        self.history == Switch::On
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Kafka connection and consumer-group settings.
#[derive(Clone, Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic MinIO publishes its bucket notifications to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "minio-events")]
    pub topic: String,
    /// Consumer group: replicas with the same group share the topic's partitions.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "objmeta")]
    pub group_id: String,
    /// Any librdkafka property as `key=value` (SASL, TLS, fetch sizes, …); repeatable.
    /// In the environment, separate several with `;`. Overrides objmeta's defaults,
    /// except `enable.auto.commit`, which objmeta keeps off (it commits after each write).
    /// Its environment value is hidden in `--help`: it may hold `sasl.password`.
    #[arg(short = 'X', long = "kafka-property", env = "KAFKA_PROPERTIES", hide_env_values = true, value_delimiter = ';', value_parser = PropertyParser)]
    pub properties: Vec<(String, String)>,
    /// This member's static identity in the group (librdkafka's
    /// `group.instance.id`): a member that restarts under the same id within
    /// `session.timeout.ms` gets its partitions back without a rebalance.
    /// Give every replica its own, stable value (the Helm chart uses the pod name).
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// SASL user name (librdkafka's `sasl.username`); a flag of its own so
    /// that it can come from a secret without the other `-X` properties.
    #[arg(long, env = "KAFKA_SASL_USERNAME", hide_env_values = true)]
    pub sasl_username: Option<String>,
    /// SASL password (librdkafka's `sasl.password`); never printed.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
}

impl KafkaConfig {
    /// The librdkafka properties that have flags of their own: (property,
    /// flag, value).
    fn dedicated(&self) -> [(&'static str, &'static str, Option<&String>); 3] {
        [
            (
                "group.instance.id",
                "--group-instance-id (KAFKA_GROUP_INSTANCE_ID)",
                self.group_instance_id.as_ref(),
            ),
            (
                "sasl.username",
                "--sasl-username (KAFKA_SASL_USERNAME)",
                self.sasl_username.as_ref(),
            ),
            (
                "sasl.password",
                "--sasl-password (KAFKA_SASL_PASSWORD)",
                self.sasl_password.as_ref(),
            ),
        ]
    }

    /// The librdkafka properties the user set: `-X` and the dedicated flags.
    pub fn user_properties(&self) -> Vec<(String, String)> {
        let dedicated = self
            .dedicated()
            .into_iter()
            .filter_map(|(key, _, value)| value.map(|v| (key.to_string(), v.clone())));
        self.properties.iter().cloned().chain(dedicated).collect()
    }

    /// A property set both by `-X` and by its own flag is refused: silently
    /// preferring one would hide a mistake in one of two configuration places.
    fn validate(&self) -> Result<(), Error> {
        for (key, flag, value) in self.dedicated() {
            if value.is_some() && self.properties.iter().any(|(k, _)| k == key) {
                return Err(Error::Config(format!(
                    "{key} is set twice: by {flag} and by -X (KAFKA_PROPERTIES); keep one"
                )));
            }
        }
        Ok(())
    }
}

/// Shows the `-X` property names only: their values may be secrets.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<String> = self
            .user_properties()
            .iter()
            .map(|(key, _)| format!("{key}={}", crate::redact::REDACTED))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("properties", &properties)
            .finish()
    }
}

/// PostgreSQL connection settings.
#[derive(Clone, Debug, Args)]
pub struct DatabaseConfig {
    /// libpq-style URL, e.g. `postgres://objmeta:secret@db:5432/objmeta?sslmode=disable`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Schema holding objmeta's tables (created by the migrations when missing).
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "public", value_parser = Schema::parse)]
    pub database_schema: Schema,
    /// Most connections objmeta opens.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 4)]
    pub database_pool_size: usize,
    /// How long to wait for a connection before counting the attempt as failed.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_connect_timeout: Duration,
    /// PostgreSQL `statement_timeout` of objmeta's write sessions: a statement that runs
    /// longer is cancelled by the server, and its batch is written again in halves
    /// (`0` disables it). Bounds how long a write can block its partitions.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub database_statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of objmeta's write sessions: how long a write waits for
    /// a row lock another session holds before it backs off and retries (`0` disables
    /// it). Must be shorter than the statement timeout, so that a lock wait is told apart
    /// from a batch that is too slow.
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub database_lock_timeout: Duration,
    /// Idle time of a connection before TCP keepalive probes start; with the interval and
    /// the count below it bounds how long a dead peer or a cut network goes unnoticed
    /// (also used as TCP_USER_TIMEOUT for unacknowledged data).
    #[arg(long, env = "DATABASE_KEEPALIVES_IDLE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub database_keepalives_idle: Duration,
    /// Time between two unanswered TCP keepalive probes.
    #[arg(long, env = "DATABASE_KEEPALIVES_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_keepalives_interval: Duration,
    /// Unanswered TCP keepalive probes after which the connection counts as dead.
    #[arg(long, env = "DATABASE_KEEPALIVES_RETRIES", default_value_t = 3)]
    pub database_keepalives_retries: u32,
}

impl DatabaseConfig {
    /// How long the network may stay silent before keepalives (or the TCP
    /// user timeout) declare the connection dead.
    pub fn dead_peer_timeout(&self) -> Duration {
        self.database_keepalives_idle
            + self.database_keepalives_interval * self.database_keepalives_retries
    }

    /// The longest one database round trip of a write can take while the
    /// server and the network work as configured: the statement timeout, a
    /// connection being opened (waiting for the pool, then connecting), or a
    /// dead peer being noticed, whichever is longest. Liveness allows a
    /// write attempt this long (plus slack) between two round trips.
    pub fn longest_round_trip(&self) -> Duration {
        self.database_statement_timeout
            .max(self.database_connect_timeout * 2)
            .max(self.dead_peer_timeout())
    }
}

impl RunConfig {
    /// Cross-field checks that clap cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        self.kafka.validate()?;
        if self.batch_max_rows == 0 {
            return Err(Error::Config(
                "--batch-max-rows (BATCH_MAX_ROWS) must be at least 1".into(),
            ));
        }
        if self.batch_max_age.is_zero() {
            return Err(Error::Config(
                "--batch-max-age (BATCH_MAX_AGE) must be longer than zero".into(),
            ));
        }
        if self.write_concurrency == 0 {
            return Err(Error::Config(
                "--write-concurrency (WRITE_CONCURRENCY) must be at least 1".into(),
            ));
        }
        let (statement, lock) = (
            self.database.database_statement_timeout,
            self.database.database_lock_timeout,
        );
        if !statement.is_zero() && (lock.is_zero() || lock >= statement) {
            return Err(Error::Config(
                "--database-lock-timeout (DATABASE_LOCK_TIMEOUT) must be set and shorter than \
                 --database-statement-timeout (DATABASE_STATEMENT_TIMEOUT): a wait for another \
                 session's lock must end as a lock timeout (retried), not a statement timeout \
                 (which splits the batch)"
                    .into(),
            ));
        }
        if self.retry_max_backoff >= self.health_stall_timeout {
            return Err(Error::Config(
                "--retry-max-backoff (RETRY_MAX_BACKOFF) must be shorter than \
                 --health-stall-timeout (HEALTH_STALL_TIMEOUT): a member that is retrying is alive"
                    .into(),
            ));
        }
        if self.reconcile_every.is_some() == self.reconcile_buckets.is_empty() {
            return Err(Error::Config(
                "--reconcile-every (RECONCILE_EVERY) and --reconcile-bucket (RECONCILE_BUCKETS) \
                 go together: give both or neither"
                    .into(),
            ));
        }
        if self.reconcile_every.is_some_and(|every| every.is_zero())
            || self.reconcile_concurrency == 0
        {
            return Err(Error::Config(
                "--reconcile-every and --reconcile-concurrency must be above zero".into(),
            ));
        }
        if self.reconcile_every.is_some() && !self.s3.is_set() {
            return Err(Error::Config(
                "--reconcile-every needs the S3 server: set --s3-endpoint (S3_ENDPOINT)".into(),
            ));
        }
        if self.enrich_concurrency == 0 {
            return Err(Error::Config(
                "--enrich-concurrency (ENRICH_CONCURRENCY) must be at least 1".into(),
            ));
        }
        let decoding = self.decoding();
        let always_reads = self.enrich == Enrich::Always
            || (decoding.may_read() && decoding.source != SourceChoice::Auto);
        if always_reads && !self.s3.is_set() {
            return Err(Error::Config(
                "--enrich reads objects with HeadObject for these events: set --s3-endpoint \
                 (S3_ENDPOINT) and its keys, or --enrich never"
                    .into(),
            ));
        }
        if self.database.database_pool_size <= self.write_concurrency {
            return Err(Error::Config(format!(
                "--database-pool-size (DATABASE_POOL_SIZE) must exceed --write-concurrency \
                 (WRITE_CONCURRENCY, {}): one connection per write lane plus one for health checks",
                self.write_concurrency
            )));
        }
        Ok(())
    }
}

impl RunConfig {
    /// How messages are decoded.
    pub fn decoding(&self) -> Decoding {
        Decoding {
            source: self.source,
            enrich: self.enrich,
        }
    }
}

/// `--source`: `auto`, or one store's name.
fn parse_source() -> impl TypedValueParser<Value = SourceChoice> {
    use clap::builder::PossibleValue;
    use clap::ValueEnum;
    let mut names = vec![PossibleValue::new("auto")];
    names.extend(
        Store::value_variants()
            .iter()
            .filter_map(Store::to_possible_value),
    );
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| Store::from_str(&name, true).map_or(SourceChoice::Auto, SourceChoice::Only))
}

/// Parses one `key=value` librdkafka property (shared with `objmeta produce`).
///
/// A clap value parser of its own because clap's errors for a plain parser
/// function quote the refused argument, and a mistyped `-X` (a `:` for the
/// `=`) may hold a password: this one's errors never repeat the argument.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PropertyParser;

impl TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let refuse = |problem: &str| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "-X/--kafka-property (KAFKA_PROPERTIES) {problem}; the argument is not shown \
                     because it may hold a secret\n"
                ),
            )
            .with_cmd(cmd)
        };
        let raw = value.to_str().ok_or_else(|| refuse("is not valid UTF-8"))?;
        parse_property(raw).map_err(refuse)
    }
}

/// `key=value`, the key trimmed; the error says what is wrong without
/// quoting `raw`.
fn parse_property(raw: &str) -> Result<(String, String), &'static str> {
    let (key, value) = raw.split_once('=').ok_or("expects key=value")?;
    let key = key.trim();
    if key.is_empty() {
        return Err("has an empty property name");
    }
    Ok((key.to_string(), value.to_string()))
}

/// A size such as `32MiB`, `512KiB`, `1GiB` or plain bytes; at least 64 KiB.
fn parse_bytes(raw: &str) -> Result<usize, String> {
    let raw = raw.trim();
    let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size like 32MiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{raw:?} is too large"))?;
    if bytes < 64 << 10 {
        return Err(format!("{raw:?} is below the minimum of 64KiB"));
    }
    Ok(bytes)
}

/// A database schema name that passed the identifier check: the only way to
/// make one, so SQL and `search_path` are only ever built from checked names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    /// Schema names go into `search_path` and DDL, where they cannot be bound
    /// parameters: only plain lower-case identifiers (at most 63 bytes, the
    /// PostgreSQL limit) are allowed, so no quoting is ever needed.
    pub fn parse(raw: &str) -> Result<Schema, String> {
        let valid = !raw.is_empty()
            && raw.len() <= 63
            && raw.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Schema(raw.to_string()))
        } else {
            Err(format!(
                "{raw:?} is not a plain lower-case identifier (a-z, 0-9, _; at most 63 characters, not starting with a digit)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("objmeta").chain(args.iter().copied()))
    }

    /// `objmeta run` with the required flags and `extra`.
    fn run_config(extra: &[&str]) -> Box<RunConfig> {
        let required = ["run", "--brokers", "k", "--database-url", "u"];
        let args: Vec<&str> = required.iter().chain(extra).copied().collect();
        match parse(&args).unwrap().command {
            Command::Run(config) => config,
            _ => panic!("expected run"),
        }
    }

    #[test]
    fn sources_and_enrichment() {
        let auto = run_config(&[]);
        assert_eq!(auto.decoding(), Decoding::default());
        auto.validate()
            .expect("auto needs no S3 endpoint until an event needs a read");
        let ceph = run_config(&["--source", "ceph", "--enrich", "never"]);
        assert_eq!(ceph.source, SourceChoice::Only(Store::Ceph));
        assert_eq!(ceph.enrich, Enrich::Never);
        ceph.validate().unwrap();
        assert!(parse(&[
            "run",
            "--brokers",
            "k",
            "--database-url",
            "u",
            "--source",
            "garage"
        ])
        .is_err());
        // An empty endpoint is none (scripts/test exports S3_ENDPOINT to the tests).
        for refused in [&["--source", "versitygw"][..], &["--enrich", "always"]] {
            let refused: Vec<&str> = refused
                .iter()
                .copied()
                .chain(["--s3-endpoint", ""])
                .collect();
            let error = run_config(&refused).validate().unwrap_err().to_string();
            assert!(error.contains("S3_ENDPOINT"), "{refused:?}: {error}");
        }
        let minio = run_config(&["--source", "minio"]);
        assert!(!minio.decoding().may_read());
        minio.validate().unwrap();
        let zero = run_config(&["--enrich-concurrency", "0"]);
        assert!(zero.validate().is_err());
    }

    #[test]
    fn run_takes_defaults_and_properties() {
        let cli = parse(&[
            "run",
            "--brokers",
            "k:9092",
            "--database-url",
            "postgres://x@y/z",
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.password=a=b",
        ])
        .unwrap();
        let Command::Run(config) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(config.kafka.topic, "minio-events");
        assert_eq!(config.kafka.group_id, "objmeta");
        assert_eq!(config.batch_max_age, Duration::from_millis(50));
        assert_eq!(
            config.kafka.properties,
            vec![
                ("security.protocol".into(), "SASL_PLAINTEXT".into()),
                ("sasl.password".into(), "a=b".into())
            ]
        );
        config.validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_name() {
        let err = parse(&[
            "run",
            "--brokers",
            "k",
            "--database-url",
            "u",
            "-X",
            "novalue",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");
        assert!(!err.to_string().contains("novalue"), "{err}");
        let err =
            parse(&["migrate", "--database-url", "u", "--database-schema", "a;b"]).unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert!(parse_bytes("1KiB").unwrap_err().contains("minimum"));
        assert!(parse_bytes("3 parsecs").unwrap_err().contains("unit"));
        let config = run_config(&["--batch-max-rows", "0"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("BATCH_MAX_ROWS"), "{err}");
    }

    #[test]
    fn a_lock_wait_must_end_before_the_statement_timeout() {
        let config = run_config(&[
            "--database-statement-timeout",
            "5s",
            "--database-lock-timeout",
            "5s",
        ]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("DATABASE_LOCK_TIMEOUT"), "{err}");
        assert_eq!(config.database.dead_peer_timeout(), Duration::from_secs(25));
        assert_eq!(
            config.database.longest_round_trip(),
            Duration::from_secs(25)
        );
    }

    #[test]
    fn a_refused_property_is_never_quoted() {
        for (flag, raw) in [
            ("-X", "sasl.password:hunter2"),
            ("-X", "=hunter2"),
            ("-X", " =hunter2"),
            ("--kafka-property", "hunter2"),
        ] {
            let args = ["run", "--brokers", "k", "--database-url", "u", flag, raw];
            let err = parse(&args).unwrap_err();
            let rendered = err.render().to_string();
            assert!(rendered.contains("kafka-property"), "{rendered}");
            assert!(!rendered.contains("hunter2"), "{raw}: {rendered}");
        }
        let err = parse(&["produce", "--brokers", "k", "-X", "sasl.password hunter2"]).unwrap_err();
        assert!(!err.render().to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_shows_property_names_only() {
        let config = run_config(&["-X", "sasl.passwrd=hunter2"]);
        let debug = format!("{config:?}");
        assert!(debug.contains("sasl.passwrd=[redacted]"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn dedicated_flags_become_properties_and_never_print() {
        let config = run_config(&[
            "--group-instance-id",
            "objmeta-2",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "hunter2",
            "-X",
            "sasl.mechanism=SCRAM-SHA-512",
        ]);
        config.validate().unwrap();
        assert_eq!(
            config.kafka.user_properties(),
            vec![
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("group.instance.id".into(), "objmeta-2".into()),
                ("sasl.username".into(), "alice".into()),
                ("sasl.password".into(), "hunter2".into()),
            ]
        );
        let debug = format!("{config:?}");
        assert!(debug.contains("sasl.password=[redacted]"), "{debug}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("alice"),
            "{debug}"
        );
    }

    #[test]
    fn a_property_given_by_its_flag_and_by_x_is_refused() {
        let config = run_config(&["--sasl-password", "a", "-X", "sasl.password=b"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("KAFKA_SASL_PASSWORD") && err.contains("set twice"),
            "{err}"
        );
        assert!(!err.contains('a') || !err.contains("=b"), "{err}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["public", "_x", "s_1", &"a".repeat(63)] {
            assert_eq!(Schema::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "1abc",
            "Public",
            "a;b",
            "a b",
            "a-b",
            "a\"b",
            "s.t",
            "é",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(Schema::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
