//! The PostgreSQL writer: one transaction per batch, one multi-row statement
//! for the object rows (arrays + `unnest`) and one for the dead letters,
//! every value a bound parameter.
//!
//! Contract with the pipeline: when `write` returns `Ok`, every change and
//! dead letter of the batch is committed, so the batch's offsets may be
//! committed to Kafka. On `Err` nothing of the batch is committed.

use std::str::FromStr;

use deadpool_postgres::{GenericClient, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::batch::{deletes_one_version, DeadLetter, Origin, WriteBatch};
use crate::config::DatabaseConfig;
use crate::dead_letter::{insert_dead_letters, DeadLetterCounts};
use crate::error::{Disposition, SinkError};
use crate::event::{Action, Basis, Change};
use crate::http::Attempt;
use crate::split::{halves, Plan, Step};
use crate::tls::TlsSettings;

/// The merge of an incoming row (`excluded`) into the stored one (`t`),
/// shared by every statement that writes object rows (events here, reads of
/// the bucket in `listing::store`), so that one rule orders them all: the
/// current state is replaced only by one that supersedes it
/// (`objmeta_supersedes`, sql/0004), and the version deletes are merged per
/// version and pruned against the merged current state. When an event
/// replaces a read of the very same state, the row keeps `read_at`: the
/// bucket was seen in that state then, which a redelivered older event must
/// still lose to. A row whose merge changes nothing is not updated at all
/// (no new row version, no index churn).
macro_rules! merge_into_stored {
    () => {
        r#"
    ON CONFLICT (bucket, key) DO UPDATE SET
        version_id = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.version_id ELSE t.version_id END,
        size = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.size ELSE t.size END,
        etag = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.etag ELSE t.etag END,
        content_type = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.content_type ELSE t.content_type END,
        user_metadata = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.user_metadata ELSE t.user_metadata END,
        system_metadata = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.system_metadata ELSE t.system_metadata END,
        event_name = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.event_name ELSE t.event_name END,
        event_time = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.event_time ELSE t.event_time END,
        sequencer = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.sequencer ELSE t.sequencer END,
        deleted_at = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.deleted_at ELSE t.deleted_at END,
        kafka_partition = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.kafka_partition ELSE t.kafka_partition END,
        kafka_offset = CASE WHEN objmeta_supersedes(excluded, t) THEN excluded.kafka_offset ELSE t.kafka_offset END,
        read_at = CASE WHEN NOT objmeta_supersedes(excluded, t) THEN t.read_at
                       WHEN objmeta_same_state(excluded, t) THEN greatest(excluded.read_at, t.read_at)
                       ELSE excluded.read_at END,
        deleted_versions = CASE
            WHEN excluded.deleted_versions = '{}' AND t.deleted_versions = '{}' THEN t.deleted_versions
            ELSE objmeta_merged_deleted_versions(excluded, t) END,
        updated_at = excluded.updated_at
    WHERE objmeta_supersedes(excluded, t)
       OR (excluded.deleted_versions <> '{}'
           AND objmeta_merged_deleted_versions(excluded, t) <> t.deleted_versions)"#
    };
}
pub(crate) use merge_into_stored;

/// Upserts a batch of object rows (one per object, reduced by batch.rs; an
/// enriched one is a read of the bucket, with `read_at`), each merged into
/// the stored one by [`merge_into_stored`]; that a merge
/// which changes nothing writes nothing is what makes redelivered events
/// cheap. Returns how many rows became, or stayed, live and how many not.
pub const UPSERT_SQL: &str = concat!(
    r#"
WITH incoming AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int8[],
        $12::timestamptz[], $13::int4[], $14::int8[], $15::text[], $16::timestamptz[]
    ) AS u(bucket, key, version_id, size, etag, content_type, user_metadata,
           system_metadata, event_name, event_time, sequencer, deleted_at,
           kafka_partition, kafka_offset, deleted_versions, read_at)
), written AS (
    INSERT INTO object_metadata AS t (
        bucket, key, version_id, size, etag, content_type, user_metadata,
        system_metadata, event_name, event_time, sequencer, deleted_at,
        kafka_partition, kafka_offset, deleted_versions, read_at, updated_at)
    SELECT i.bucket, i.key, i.version_id, i.size, i.etag, i.content_type, i.user_metadata::jsonb,
           i.system_metadata::jsonb, i.event_name, i.event_time, i.sequencer, i.deleted_at,
           i.kafka_partition, i.kafka_offset, i.deleted_versions::jsonb, i.read_at, now()
    FROM incoming i"#,
    merge_into_stored!(),
    r#"
    RETURNING live
)
SELECT count(*) FILTER (WHERE live), count(*) FILTER (WHERE NOT live) FROM written
"#
);

/// The metadata of a tombstone.
const EMPTY_OBJECT: &str = "{}";

/// What one batch write did, for metrics and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub upserted: u64,
    pub tombstoned: u64,
    /// Changes the stored state already superseded (duplicates, late arrivals).
    pub stale: u64,
    /// Dead-letter rows inserted (not those already stored), per reason code.
    pub dead_letters: DeadLetterCounts,
    /// Changes the database refused (dead-lettered individually).
    pub rejected: u64,
}

impl std::ops::AddAssign for WriteReport {
    fn add_assign(&mut self, other: Self) {
        self.upserted += other.upserted;
        self.tombstoned += other.tombstoned;
        self.stale += other.stale;
        self.dead_letters += other.dead_letters;
        self.rejected += other.rejected;
    }
}

/// Builds the pool of write connections. Connections are opened lazily, so
/// a database that is down at start-up shows as retriable errors, not a
/// crash.
///
/// Every wait is bounded: the server cancels a statement after
/// `statement_timeout` and a lock wait after `lock_timeout`, ends a
/// transaction left idle (objmeta never leaves one idle longer than a round
/// trip), and TCP keepalives plus `TCP_USER_TIMEOUT` break a connection to a
/// peer that stopped answering.
///
/// TLS follows libpq's `sslmode` (and `sslrootcert`), which tokio-postgres
/// only partly understands: see [`crate::tls::TlsSettings`].
pub fn connect(config: &DatabaseConfig) -> Result<Pool, SinkError> {
    let statement = config.database_statement_timeout.as_millis();
    let options = format!(
        "-c search_path={} -c statement_timeout={statement} -c lock_timeout={} \
         -c idle_in_transaction_session_timeout={statement}",
        config.database_schema,
        config.database_lock_timeout.as_millis(),
    );
    build_pool(config, options)
}

/// Builds a pool for the migrations: the same connection settings without
/// the statement and lock timeouts, since a migration may rightly run long
/// (and waits for another replica's under an advisory lock).
pub fn connect_for_migrations(config: &DatabaseConfig) -> Result<Pool, SinkError> {
    build_pool(config, format!("-c search_path={}", config.database_schema))
}

fn build_pool(config: &DatabaseConfig, options: String) -> Result<Pool, SinkError> {
    let tls = TlsSettings::from_url(&config.database_url)?;
    let mut pg = tokio_postgres::Config::from_str(&tls.driver_url)
        .map_err(|e| SinkError::Url(e.to_string()))?;
    pg.options(options);
    if pg.get_application_name().is_none() {
        pg.application_name("objmeta");
    }
    pg.connect_timeout(config.database_connect_timeout);
    pg.keepalives(true)
        .keepalives_idle(config.database_keepalives_idle)
        .keepalives_interval(config.database_keepalives_interval)
        .keepalives_retries(config.database_keepalives_retries)
        .tcp_user_timeout(config.dead_peer_timeout());
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tls.connector()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.database_pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.database_connect_timeout))
        .create_timeout(Some(config.database_connect_timeout))
        .recycle_timeout(Some(config.database_connect_timeout))
        .build()
        .map_err(|e| SinkError::Url(e.to_string()))
}

/// Writes batches to PostgreSQL.
#[derive(Clone)]
pub struct Sink {
    pool: Pool,
    topic: String,
}

/// A pooled connection lent to one write. If the write's future is dropped
/// before it finished (shutdown abandoned it), the connection may be in the
/// middle of a statement: it is cancelled on the server and closed instead
/// of going back to the pool, so nothing of it can commit later.
struct Lent {
    client: Option<deadpool_postgres::Client>,
    finished: bool,
}

impl Lent {
    fn client(&mut self) -> Result<&mut deadpool_postgres::Client, SinkError> {
        self.client.as_mut().ok_or(SinkError::Abandoned)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.finished {
            return; // back to the pool
        }
        let cancel = client.cancel_token();
        drop(deadpool_postgres::Object::take(client));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
                    tracing::debug!(error = %e, "cancelling an abandoned statement");
                }
            });
        }
    }
}

impl Sink {
    pub fn new(pool: Pool, topic: String) -> Self {
        Sink { pool, topic }
    }

    /// One attempt at writing the batch, as [`Sink::write_attempt`] with a
    /// fresh plan, watched by no one (tools and tests outside the pipeline).
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteReport, SinkError> {
        let mut plan = Plan::new(&batch.changes);
        self.write_attempt(batch, &mut plan, &Attempt::detached())
            .await
    }

    /// Writes the whole batch in one transaction, one statement per range
    /// of `plan`. When the database refuses a value, the offending rows are
    /// isolated and dead-lettered, so one bad row never blocks a partition;
    /// when a statement may be too big, it is cut in halves and `plan`
    /// keeps the cuts for the next attempt. `attempt` is told of every
    /// finished round trip (liveness).
    pub async fn write_attempt(
        &self,
        batch: &WriteBatch,
        plan: &mut Plan,
        attempt: &Attempt,
    ) -> Result<WriteReport, SinkError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(SinkError::pool("getting a connection"))?;
        attempt.touch();
        let mut lent = Lent {
            client: Some(client),
            finished: false,
        };
        let result = self.write_on(lent.client()?, batch, plan, attempt).await;
        lent.finished = true;
        result
    }

    async fn write_on(
        &self,
        client: &mut deadpool_postgres::Client,
        batch: &WriteBatch,
        plan: &mut Plan,
        attempt: &Attempt,
    ) -> Result<WriteReport, SinkError> {
        if plan.is_whole() {
            match self.write_whole(client, batch).await {
                Err(e) if e.disposition() == Disposition::Rejected => {
                    tracing::warn!(error = %e, rows = batch.changes.len(), "database refused a row, isolating it");
                }
                Err(e) if e.disposition() == Disposition::Split => {
                    tracing::warn!(error = %e, rows = batch.changes.len(), "batch may be too big, writing it in halves");
                    if batch.changes.len() > 1 {
                        plan.cut(&(0..batch.changes.len()));
                    }
                }
                other => return other,
            }
            attempt.touch();
        }
        self.write_planned(client, batch, plan, attempt).await
    }

    /// Checks that a connection can be made and used (readiness).
    /// The database's clock now: what reads of the bucket are versioned by (`read_at`).
    pub async fn now(&self) -> Result<time::OffsetDateTime, SinkError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(SinkError::pool("getting a connection"))?;
        database_now(&client).await
    }

    pub async fn ping(&self) -> Result<(), SinkError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(SinkError::pool("getting a connection"))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(SinkError::postgres("ping"))?;
        Ok(())
    }

    async fn write_whole(
        &self,
        client: &mut deadpool_postgres::Client,
        batch: &WriteBatch,
    ) -> Result<WriteReport, SinkError> {
        let tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        let mut report = upsert(&tx, Rows::of(batch)).await?;
        report.dead_letters = insert_dead_letters(&tx, &self.topic, &batch.dead_letters).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(report)
    }

    /// Writes the plan's ranges under savepoints, halving a range that
    /// failed as long as `Plan::after_failure` says so, until every refused
    /// row stands alone; dead-letters those rows with the database's reason.
    async fn write_planned(
        &self,
        client: &mut deadpool_postgres::Client,
        batch: &WriteBatch,
        plan: &mut Plan,
        attempt: &Attempt,
    ) -> Result<WriteReport, SinkError> {
        let mut tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        let mut report = WriteReport::default();
        let mut refused = Vec::new();
        let mut ranges = plan.ranges();
        ranges.reverse();
        while let Some(range) = ranges.pop() {
            let savepoint = tx
                .savepoint("rows")
                .await
                .map_err(SinkError::postgres("savepoint"))?;
            let result = upsert(&savepoint, Rows::of(batch).slice(range.clone())).await;
            attempt.touch();
            let error = match result {
                Ok(written) => {
                    savepoint
                        .commit()
                        .await
                        .map_err(SinkError::postgres("release savepoint"))?;
                    report += written;
                    continue;
                }
                Err(e) => e,
            };
            match plan.after_failure(&range, &error) {
                Step::Fail => return Err(error),
                Step::Refuse => {
                    tracing::warn!(error = %error, "dead-lettering a row the database does not take");
                    refused.push(refused_row(batch, range.start, &error));
                }
                Step::Halve if error.disposition() == Disposition::Split => {
                    let (first, second) = plan.cut(&range);
                    ranges.extend([second, first]);
                }
                Step::Halve => {
                    let (first, second) = halves(&range);
                    ranges.extend([second, first]);
                }
            }
            savepoint
                .rollback()
                .await
                .map_err(SinkError::postgres("rollback to savepoint"))?;
        }
        report.rejected = refused.len() as u64;
        let all_dead = batch.dead_letters.iter().chain(refused.iter());
        report.dead_letters = insert_dead_letters(&tx, &self.topic, all_dead).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(report)
    }
}

/// Column arrays for the upsert (`UPSERT_SQL`'s parameters, in order),
/// borrowed from the batch's rows. Public for the benchmark's statement
/// shapes.
pub struct UpsertColumns<'a> {
    pub bucket: Vec<&'a str>,
    pub key: Vec<&'a str>,
    pub version_id: Vec<Option<&'a str>>,
    pub size: Vec<Option<i64>>,
    pub etag: Vec<Option<&'a str>>,
    pub content_type: Vec<Option<&'a str>>,
    /// JSON object text, cast to jsonb by the statement.
    pub user_metadata: Vec<&'a str>,
    pub system_metadata: Vec<&'a str>,
    pub event_name: Vec<Option<&'a str>>,
    pub event_time: Vec<Option<time::OffsetDateTime>>,
    /// `None` for a row with no current state (only version deletes).
    pub sequencer: Vec<Option<i64>>,
    pub deleted_at: Vec<Option<time::OffsetDateTime>>,
    pub kafka_partition: Vec<Option<i32>>,
    pub kafka_offset: Vec<Option<i64>>,
    pub deleted_versions: Vec<&'a str>,
    pub read_at: Vec<Option<time::OffsetDateTime>>,
}

/// The rows of a batch (or of a part of it), as the upsert takes them.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub changes: &'a [Change],
    pub origins: &'a [Origin],
    pub deleted_versions: &'a [String],
}

impl<'a> Rows<'a> {
    pub fn of(batch: &'a WriteBatch) -> Self {
        Rows {
            changes: &batch.changes,
            origins: &batch.origins,
            deleted_versions: &batch.deleted_versions,
        }
    }

    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        Rows {
            changes: &self.changes[range.clone()],
            origins: &self.origins[range.clone()],
            deleted_versions: &self.deleted_versions[range],
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl<'a> UpsertColumns<'a> {
    pub fn new(rows: Rows<'a>) -> Self {
        let n = rows.len();
        let mut columns = UpsertColumns {
            bucket: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            version_id: Vec::with_capacity(n),
            size: Vec::with_capacity(n),
            etag: Vec::with_capacity(n),
            content_type: Vec::with_capacity(n),
            user_metadata: Vec::with_capacity(n),
            system_metadata: Vec::with_capacity(n),
            event_name: Vec::with_capacity(n),
            event_time: Vec::with_capacity(n),
            sequencer: Vec::with_capacity(n),
            deleted_at: Vec::with_capacity(n),
            kafka_partition: Vec::with_capacity(n),
            kafka_offset: Vec::with_capacity(n),
            deleted_versions: Vec::with_capacity(n),
            read_at: Vec::with_capacity(n),
        };
        for ((change, origin), deleted_versions) in rows
            .changes
            .iter()
            .zip(rows.origins)
            .zip(rows.deleted_versions)
        {
            columns.push(change, *origin, deleted_versions);
        }
        columns
    }

    /// The statement's parameters, `$1` to `$15`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.bucket,
            &self.key,
            &self.version_id,
            &self.size,
            &self.etag,
            &self.content_type,
            &self.user_metadata,
            &self.system_metadata,
            &self.event_name,
            &self.event_time,
            &self.sequencer,
            &self.deleted_at,
            &self.kafka_partition,
            &self.kafka_offset,
            &self.deleted_versions,
            &self.read_at,
        ]
    }

    fn push(&mut self, change: &'a Change, origin: Origin, deleted_versions: &'a str) {
        self.bucket.push(&change.object.bucket);
        self.key.push(&change.object.key);
        self.deleted_versions.push(deleted_versions);
        self.read_at.push(match change.basis {
            Basis::Read { at } => Some(at),
            Basis::Event | Basis::Hint => None,
        });
        if deletes_one_version(change) {
            // No current state in this batch: the version delete is in
            // `deleted_versions`; the current columns stay empty.
            self.push_no_current_state();
            return;
        }
        self.event_name.push(Some(&change.event_name));
        self.event_time.push(Some(change.event_time));
        self.sequencer.push(Some(change.sequencer));
        self.kafka_partition.push(Some(origin.partition));
        self.kafka_offset.push(Some(origin.offset));
        match &change.action {
            Action::Upsert(state) => {
                self.version_id.push(state.version_id.as_deref());
                self.size.push(state.size);
                self.etag.push(state.etag.as_deref());
                self.content_type.push(state.content_type.as_deref());
                self.user_metadata.push(state.user_metadata.as_json());
                self.system_metadata.push(state.system_metadata.as_json());
                self.deleted_at.push(None);
            }
            Action::Remove { version_id, .. } => {
                self.version_id.push(version_id.as_deref());
                self.size.push(None);
                self.etag.push(None);
                self.content_type.push(None);
                self.user_metadata.push(EMPTY_OBJECT);
                self.system_metadata.push(EMPTY_OBJECT);
                self.deleted_at.push(Some(change.event_time));
            }
        }
    }

    fn push_no_current_state(&mut self) {
        self.version_id.push(None);
        self.size.push(None);
        self.etag.push(None);
        self.content_type.push(None);
        self.user_metadata.push(EMPTY_OBJECT);
        self.system_metadata.push(EMPTY_OBJECT);
        self.event_name.push(None);
        self.event_time.push(None);
        self.sequencer.push(None);
        self.deleted_at.push(None);
        self.kafka_partition.push(None);
        self.kafka_offset.push(None);
    }
}

async fn upsert(client: &impl GenericClient, rows: Rows<'_>) -> Result<WriteReport, SinkError> {
    if rows.is_empty() {
        return Ok(WriteReport::default());
    }
    let columns = UpsertColumns::new(rows);
    let statement = client
        .prepare_cached(UPSERT_SQL)
        .await
        .map_err(SinkError::postgres("prepare upsert"))?;
    let row = client
        .query_one(&statement, &columns.params())
        .await
        .map_err(SinkError::postgres("upsert objects"))?;
    let upserted = count(row.get::<_, i64>(0));
    let tombstoned = count(row.get::<_, i64>(1));
    Ok(WriteReport {
        upserted,
        tombstoned,
        stale: (rows.len() as u64).saturating_sub(upserted + tombstoned),
        ..WriteReport::default()
    })
}

/// The database's clock (`clock_timestamp()`, not the transaction's start), read on `client`.
pub(crate) async fn database_now(
    client: &impl GenericClient,
) -> Result<time::OffsetDateTime, SinkError> {
    let row = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(SinkError::postgres("reading the database clock"))?;
    Ok(row.get(0))
}

/// A count PostgreSQL returned (bigint), as the u64 objmeta counts in.
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A count as the bigint PostgreSQL and the gauges take.
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A change the database refused, as a dead letter. The original payload
/// is not kept in memory for every message, so the dead letter carries the
/// parsed change as JSON: everything the row would have held. Its key is
/// the change's record, so that two refused records of one message are
/// both kept.
fn refused_row(batch: &WriteBatch, index: usize, error: &SinkError) -> DeadLetter {
    let reason = format!("database refused the row: {}", database_reason(error));
    change_dead_letter(
        &batch.changes[index],
        batch.origins[index],
        "database_rejected",
        reason,
    )
}

/// A change that cannot be written, as a dead letter keyed by its record and carrying the
/// change as JSON (the message's payload is not kept in memory once parsed).
pub(crate) fn change_dead_letter(
    change: &Change,
    origin: Origin,
    code: &'static str,
    reason: String,
) -> DeadLetter {
    let message_key = format!("{}/{}", change.object.bucket, change.object.key);
    DeadLetter {
        origin,
        record: change.record,
        code,
        message_key: Some(message_key.into_bytes()),
        payload: Some(change_as_json(change).to_string().into_bytes()),
        reason,
    }
}

/// The server's message and SQLSTATE (the driver's `Display` hides them).
pub(crate) fn database_reason(error: &SinkError) -> String {
    match error {
        SinkError::Postgres { source, .. } => crate::error::describe_postgres(source),
        other => other.to_string(),
    }
}

fn change_as_json(change: &Change) -> Value {
    let mut json = serde_json::json!({
        "bucket": change.object.bucket,
        "key": change.object.key,
        "eventName": change.event_name,
        "eventTime": change.event_time.unix_timestamp_nanos().to_string(),
        "sequencer": change.sequencer,
    });
    if let (Action::Upsert(state), Some(fields)) = (&change.action, json.as_object_mut()) {
        fields.insert("versionId".into(), state.version_id.clone().into());
        fields.insert("size".into(), state.size.into());
        fields.insert("eTag".into(), state.etag.clone().into());
        fields.insert("contentType".into(), state.content_type.clone().into());
        fields.insert("userMetadata".into(), state.user_metadata.to_value());
        fields.insert("systemMetadata".into(), state.system_metadata.to_value());
    }
    json
}

/// Keeps the readiness flag in step with the database while no batch is
/// being written (writes update it themselves).
pub async fn watch_readiness(
    sink: Sink,
    health: std::sync::Arc<crate::http::Health>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        // A server that stopped answering must read as not ready, not as
        // whatever the last answer was.
        let ready = matches!(
            tokio::time::timeout(interval, sink.ping()).await,
            Ok(Ok(()))
        );
        health.set_database_ready(ready);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
