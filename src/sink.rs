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

use crate::batch::{DeadLetter, WriteBatch};
use crate::config::DatabaseConfig;
use crate::error::{Disposition, SinkError};
use crate::event::{Action, Change};
use crate::tls::TlsSettings;

/// Upserts a batch of changes. A row is written only when the incoming
/// change supersedes the stored one (same rule as `batch::supersedes`):
/// newer sequencer, or equal unless a creation would undo a removal. A
/// guarded removal (one specific version deleted) applies only when that
/// version is the stored one, or when the object was never seen.
/// Returns how many rows became live and how many became tombstones.
pub const UPSERT_SQL: &str = r#"
WITH incoming AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int8[],
        $12::timestamptz[], $13::bool[]
    ) AS u(bucket, key, version_id, size, etag, content_type, user_metadata,
           system_metadata, event_name, event_time, sequencer, deleted_at, version_guard)
), written AS (
    INSERT INTO object_metadata AS t (
        bucket, key, version_id, size, etag, content_type, user_metadata,
        system_metadata, event_name, event_time, sequencer, deleted_at, updated_at)
    SELECT i.bucket, i.key, i.version_id, i.size, i.etag, i.content_type, i.user_metadata::jsonb,
           i.system_metadata::jsonb, i.event_name, i.event_time, i.sequencer, i.deleted_at, now()
    FROM incoming i
    WHERE NOT i.version_guard OR NOT EXISTS (
        SELECT 1 FROM object_metadata o
        WHERE o.bucket = i.bucket AND o.key = i.key
          AND o.version_id IS DISTINCT FROM i.version_id)
    ON CONFLICT (bucket, key) DO UPDATE SET
        version_id = excluded.version_id,
        size = excluded.size,
        etag = excluded.etag,
        content_type = excluded.content_type,
        user_metadata = excluded.user_metadata,
        system_metadata = excluded.system_metadata,
        event_name = excluded.event_name,
        event_time = excluded.event_time,
        sequencer = excluded.sequencer,
        deleted_at = excluded.deleted_at,
        updated_at = excluded.updated_at
    WHERE excluded.sequencer > t.sequencer
       OR (excluded.sequencer = t.sequencer
           AND (excluded.deleted_at IS NOT NULL OR t.deleted_at IS NULL))
    RETURNING deleted_at IS NULL AS live
)
SELECT count(*) FILTER (WHERE live), count(*) FILTER (WHERE NOT live) FROM written
"#;

const DEAD_LETTER_SQL: &str = r#"
INSERT INTO dead_letters (topic, partition, "offset", message_key, payload, reason)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
ON CONFLICT (topic, partition, "offset") DO NOTHING
"#;

/// The metadata of a tombstone.
const EMPTY_OBJECT: &str = "{}";

/// What one batch write did, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub upserted: u64,
    pub tombstoned: u64,
    /// Changes the stored state already superseded (duplicates, late arrivals).
    pub stale: u64,
    pub dead_letters: u64,
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

/// Builds the connection pool. Connections are opened lazily, so a database
/// that is down at start-up shows as retriable errors, not a crash.
///
/// TLS follows libpq's `sslmode` (and `sslrootcert`), which tokio-postgres
/// only partly understands: see [`crate::tls::TlsSettings`].
pub fn connect(config: &DatabaseConfig) -> Result<Pool, SinkError> {
    let tls = TlsSettings::from_url(&config.database_url)?;
    let mut pg = tokio_postgres::Config::from_str(&tls.driver_url)
        .map_err(|e| SinkError::Url(e.to_string()))?;
    pg.options(format!("-c search_path={}", config.database_schema));
    if pg.get_application_name().is_none() {
        pg.application_name("objmeta");
    }
    pg.connect_timeout(config.database_connect_timeout);
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

impl Sink {
    pub fn new(pool: Pool, topic: String) -> Self {
        Sink { pool, topic }
    }

    /// Writes the whole batch in one transaction. When the database refuses
    /// a value, the batch is written again with the offending rows isolated
    /// and dead-lettered, so one bad row never blocks a partition.
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteReport, SinkError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(SinkError::pool("getting a connection"))?;
        match self.write_whole(&mut client, batch).await {
            Err(e) if e.disposition() == Disposition::Rejected => {
                tracing::warn!(error = %e, rows = batch.changes.len(), "database refused a row, isolating it");
                self.write_isolating(&mut client, batch).await
            }
            other => other,
        }
    }

    /// Checks that a connection can be made and used (readiness).
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
        let mut report = upsert(&tx, &batch.changes).await?;
        report.dead_letters = insert_dead_letters(&tx, &self.topic, &batch.dead_letters).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(report)
    }

    /// Bisects the changes under savepoints until every refused row stands
    /// alone, then dead-letters those rows with the database's reason.
    async fn write_isolating(
        &self,
        client: &mut deadpool_postgres::Client,
        batch: &WriteBatch,
    ) -> Result<WriteReport, SinkError> {
        let mut tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        let mut report = WriteReport::default();
        let mut refused = Vec::new();
        let mut ranges = Vec::new();
        ranges.push(0..batch.changes.len());
        while let Some(range) = ranges.pop() {
            let savepoint = tx
                .savepoint("rows")
                .await
                .map_err(SinkError::postgres("savepoint"))?;
            match upsert(&savepoint, &batch.changes[range.clone()]).await {
                Ok(written) => {
                    savepoint
                        .commit()
                        .await
                        .map_err(SinkError::postgres("release savepoint"))?;
                    report += written;
                }
                Err(e) if e.disposition() == Disposition::Rejected => {
                    savepoint
                        .rollback()
                        .await
                        .map_err(SinkError::postgres("rollback to savepoint"))?;
                    if range.len() == 1 {
                        refused.push(refused_row(batch, range.start, &e));
                    } else {
                        let middle = range.start + range.len() / 2;
                        ranges.push(middle..range.end);
                        ranges.push(range.start..middle);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        report.rejected = refused.len() as u64;
        let all_dead = batch.dead_letters.iter().chain(refused.iter());
        report.dead_letters = insert_dead_letters(&tx, &self.topic, all_dead).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(report)
    }
}

/// Column arrays for the upsert (`UPSERT_SQL`'s parameters, in order),
/// borrowed from the changes. Public for the benchmark's statement shapes.
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
    pub event_name: Vec<&'a str>,
    pub event_time: Vec<time::OffsetDateTime>,
    pub sequencer: Vec<i64>,
    pub deleted_at: Vec<Option<time::OffsetDateTime>>,
    pub version_guard: Vec<bool>,
}

impl<'a> UpsertColumns<'a> {
    pub fn new(changes: &'a [Change]) -> Self {
        let n = changes.len();
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
            version_guard: Vec::with_capacity(n),
        };
        for change in changes {
            columns.push(change);
        }
        columns
    }

    /// The statement's parameters, `$1` to `$13`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 13] {
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
            &self.version_guard,
        ]
    }

    fn push(&mut self, change: &'a Change) {
        self.bucket.push(&change.object.bucket);
        self.key.push(&change.object.key);
        self.event_name.push(&change.event_name);
        self.event_time.push(change.event_time);
        self.sequencer.push(change.sequencer);
        match &change.action {
            Action::Upsert(state) => {
                self.version_id.push(state.version_id.as_deref());
                self.size.push(state.size);
                self.etag.push(state.etag.as_deref());
                self.content_type.push(state.content_type.as_deref());
                self.user_metadata.push(state.user_metadata.as_json());
                self.system_metadata.push(state.system_metadata.as_json());
                self.deleted_at.push(None);
                self.version_guard.push(false);
            }
            Action::Remove {
                version_id,
                only_if_current_version,
            } => {
                self.version_id.push(version_id.as_deref());
                self.size.push(None);
                self.etag.push(None);
                self.content_type.push(None);
                self.user_metadata.push(EMPTY_OBJECT);
                self.system_metadata.push(EMPTY_OBJECT);
                self.deleted_at.push(Some(change.event_time));
                self.version_guard.push(*only_if_current_version);
            }
        }
    }
}

async fn upsert(client: &impl GenericClient, changes: &[Change]) -> Result<WriteReport, SinkError> {
    if changes.is_empty() {
        return Ok(WriteReport::default());
    }
    let columns = UpsertColumns::new(changes);
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
        stale: (changes.len() as u64).saturating_sub(upserted + tombstoned),
        ..WriteReport::default()
    })
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

async fn insert_dead_letters<'a>(
    client: &impl GenericClient,
    topic: &str,
    dead_letters: impl IntoIterator<Item = &'a DeadLetter>,
) -> Result<u64, SinkError> {
    let mut topics = Vec::new();
    let mut partitions = Vec::new();
    let mut offsets = Vec::new();
    let mut keys = Vec::new();
    let mut payloads = Vec::new();
    let mut reasons = Vec::new();
    for dead_letter in dead_letters {
        topics.push(topic);
        partitions.push(dead_letter.origin.partition);
        offsets.push(dead_letter.origin.offset);
        keys.push(dead_letter.message_key.as_deref());
        payloads.push(dead_letter.payload.as_deref());
        // text cannot hold U+0000; the raw bytes are kept in `payload`.
        reasons.push(dead_letter.reason.replace('\0', "\\u0000"));
    }
    if topics.is_empty() {
        return Ok(0);
    }
    let statement = client
        .prepare_cached(DEAD_LETTER_SQL)
        .await
        .map_err(SinkError::postgres("prepare dead letters"))?;
    client
        .execute(
            &statement,
            &[&topics, &partitions, &offsets, &keys, &payloads, &reasons],
        )
        .await
        .map_err(SinkError::postgres("insert dead letters"))?;
    Ok(topics.len() as u64)
}

/// A change the database refused, as a dead letter. The original payload
/// is not kept in memory for every message, so the dead letter carries the
/// parsed change as JSON: everything the row would have held.
fn refused_row(batch: &WriteBatch, index: usize, error: &SinkError) -> DeadLetter {
    let change = &batch.changes[index];
    let origin = batch.origins[index];
    let message_key = format!("{}/{}", change.object.bucket, change.object.key);
    DeadLetter {
        origin,
        message_key: Some(message_key.into_bytes()),
        payload: Some(change_as_json(change).to_string().into_bytes()),
        reason: format!("database refused the row: {}", database_reason(error)),
    }
}

fn database_reason(error: &SinkError) -> String {
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
        let ready = sink.ping().await.is_ok();
        health.set_database_ready(ready);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
