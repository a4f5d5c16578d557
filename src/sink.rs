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

use crate::batch::{deletes_one_version, version_key, DeadLetter, Origin, WriteBatch};
use crate::config::DatabaseConfig;
use crate::dead_letter::{insert_dead_letters, DeadLetterCounts};
use crate::error::{Disposition, SinkError};
use crate::event::{Action, Basis, Change};
use crate::http::Attempt;
use crate::split::{halves, Plan, Step};
use crate::tls::TlsSettings;

/// Writes a batch of version rows (one per object version, reduced by
/// batch.rs; an enriched one is a read of the bucket, with `read_at`), each
/// merged into the stored one by sql/0005's `objmeta_upsert_versions`, the
/// one place of that rule, then derives their objects' rows
/// (`objmeta_write_versions`, one round trip); that a merge which changes
/// nothing writes nothing is what makes redelivered events cheap. Returns how
/// many derived rows became live and how many not (rows that did not change
/// are not written).
pub const UPSERT_SQL: &str = "SELECT * FROM objmeta_write_versions(\
     $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::text[], $10::timestamptz[], $11::int8[], $12::timestamptz[], $13::int4[], \
     $14::int8[], $15::timestamptz[], $16::text[], $17::timestamptz[], $18::int8[], \
     $19::int4[], $20::int8[])";

/// Derives the current rows of the given objects from their versions
/// (sql/0005, `objmeta_derive`), for writes that changed versions by other
/// means (a reconcile's sweep); counts as `UPSERT_SQL` does.
const DERIVE_SQL: &str = "SELECT count(*) FILTER (WHERE live), count(*) FILTER (WHERE NOT live) \
     FROM objmeta_derive($1::text[], $2::text[])";

/// Appends changes to `object_history` (sql/0005's `objmeta_record_history`).
const HISTORY_SQL: &str = "SELECT objmeta_record_history(\
     $1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::timestamptz[], $7::bool[], \
     $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::int8[], \
     $15::timestamptz[])";

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
         -c idle_in_transaction_session_timeout={statement} {DERIVES}",
        config.database_schema,
        config.database_lock_timeout.as_millis(),
    );
    build_pool(config, options)
}

/// The connection option of this version's writers: it derives object_metadata from
/// object_versions, so its writes are not mirrored like those of replicas of the previous
/// schema (sql/0005's trigger).
pub const DERIVES: &str = "-c objmeta.derives=on";

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

    /// The database's clock now: what reads of the bucket are versioned by (`read_at`).
    pub async fn now(&self) -> Result<time::OffsetDateTime, SinkError> {
        database_now(&self.pool).await
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
        let mut report = upsert(&tx, Rows::of(batch)).await?;
        record_history(&tx, batch.history.iter().map(|(c, o)| (c, *o))).await?;
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
        // The versions whose row was refused: their changes are not history either.
        let mut refused_versions = std::collections::HashSet::new();
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
                    refused.extend(refused_row(batch, range.start, &error));
                    let change = &batch.changes[range.start];
                    refused_versions.insert((&change.object, version_key(change)));
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
        let kept = batch
            .history
            .iter()
            .filter(|(change, _)| {
                !refused_versions.contains(&(&change.object, version_key(change)))
            })
            .map(|(c, o)| (c, *o));
        record_history(&tx, kept).await?;
        let all_dead = batch.dead_letters.iter().chain(refused.iter());
        report.dead_letters = insert_dead_letters(&tx, &self.topic, all_dead).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(report)
    }
}

/// Column arrays for the upsert (`UPSERT_SQL`'s parameters, in order),
/// borrowed from the batch's rows. Public for the benchmark's statement
/// shapes.
#[derive(Default)]
pub struct UpsertColumns<'a> {
    pub bucket: Vec<&'a str>,
    pub key: Vec<&'a str>,
    pub version_id: Vec<&'a str>,
    pub size: Vec<Option<i64>>,
    pub etag: Vec<Option<&'a str>>,
    pub content_type: Vec<Option<&'a str>>,
    /// JSON object text, cast to jsonb by the statement.
    pub user_metadata: Vec<&'a str>,
    pub system_metadata: Vec<&'a str>,
    pub event_name: Vec<Option<&'a str>>,
    pub event_time: Vec<Option<time::OffsetDateTime>>,
    /// `None` for a row with no state (only its permanent delete).
    pub sequencer: Vec<Option<i64>>,
    pub deleted_at: Vec<Option<time::OffsetDateTime>>,
    pub kafka_partition: Vec<Option<i32>>,
    pub kafka_offset: Vec<Option<i64>>,
    pub read_at: Vec<Option<time::OffsetDateTime>>,
    pub deleted_by: Vec<Option<&'a str>>,
    pub deleted_time: Vec<Option<time::OffsetDateTime>>,
    pub deleted_sequencer: Vec<Option<i64>>,
    pub deleted_partition: Vec<Option<i32>>,
    pub deleted_offset: Vec<Option<i64>>,
}

/// The rows of a batch (or of a part of it), as the upsert takes them.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub changes: &'a [Change],
    pub origins: &'a [Origin],
    pub deletes: &'a [Option<(Change, Origin)>],
}

impl<'a> Rows<'a> {
    pub fn of(batch: &'a WriteBatch) -> Self {
        Rows {
            changes: &batch.changes,
            origins: &batch.origins,
            deletes: &batch.deletes,
        }
    }

    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        Rows {
            changes: &self.changes[range.clone()],
            origins: &self.origins[range.clone()],
            deletes: &self.deletes[range],
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Distinct objects among the rows (they are in object order).
    fn objects(&self) -> u64 {
        let mut previous = None;
        let mut count = 0;
        for change in self.changes {
            if previous != Some(&change.object) {
                count += 1;
                previous = Some(&change.object);
            }
        }
        count
    }
}

/// Where a change was seen: its Kafka position, or none for a read of the bucket.
fn position(change: &Change, origin: Origin) -> (Option<i32>, Option<i64>) {
    match change.basis {
        Basis::Read { .. } => (None, None),
        Basis::Event | Basis::Hint => (Some(origin.partition), Some(origin.offset)),
    }
}

fn read_at(change: &Change) -> Option<time::OffsetDateTime> {
    match change.basis {
        Basis::Read { at } => Some(at),
        Basis::Event | Basis::Hint => None,
    }
}

impl<'a> UpsertColumns<'a> {
    pub fn new(rows: Rows<'a>) -> Self {
        let mut columns = UpsertColumns::default();
        for ((change, origin), delete) in rows.changes.iter().zip(rows.origins).zip(rows.deletes) {
            columns.push(change, *origin, delete.as_ref());
        }
        columns
    }

    /// The statement's parameters, `$1` to `$20`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 20] {
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
            &self.read_at,
            &self.deleted_by,
            &self.deleted_time,
            &self.deleted_sequencer,
            &self.deleted_partition,
            &self.deleted_offset,
        ]
    }

    fn push(&mut self, change: &'a Change, origin: Origin, delete: Option<&'a (Change, Origin)>) {
        self.bucket.push(&change.object.bucket);
        self.key.push(&change.object.key);
        self.version_id.push(version_key(change));
        if deletes_one_version(change) {
            // No state of this version in the batch: only its delete.
            self.push_state(None, origin);
            self.push_delete(Some((change, origin)));
        } else {
            self.push_state(Some(change), origin);
            self.push_delete(delete.map(|(c, o)| (c, *o)));
        }
    }

    fn push_state(&mut self, change: Option<&'a Change>, origin: Origin) {
        let Some(change) = change else {
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
            self.read_at.push(None);
            return;
        };
        self.event_name.push(Some(&change.event_name));
        self.event_time.push(Some(change.event_time));
        self.sequencer.push(Some(change.sequencer));
        let (partition, offset) = position(change, origin);
        self.kafka_partition.push(partition);
        self.kafka_offset.push(offset);
        self.read_at.push(read_at(change));
        match &change.action {
            Action::Upsert(state) => {
                self.size.push(state.size);
                self.etag.push(state.etag.as_deref());
                self.content_type.push(state.content_type.as_deref());
                self.user_metadata.push(state.user_metadata.as_json());
                self.system_metadata.push(state.system_metadata.as_json());
                self.deleted_at.push(None);
            }
            Action::Remove { .. } => {
                self.size.push(None);
                self.etag.push(None);
                self.content_type.push(None);
                self.user_metadata.push(EMPTY_OBJECT);
                self.system_metadata.push(EMPTY_OBJECT);
                self.deleted_at.push(Some(change.event_time));
            }
        }
    }

    fn push_delete(&mut self, delete: Option<(&'a Change, Origin)>) {
        let (partition, offset) = delete.map_or((None, None), |(c, o)| position(c, o));
        self.deleted_by
            .push(delete.map(|(c, _)| c.event_name.as_str()));
        self.deleted_time.push(delete.map(|(c, _)| c.event_time));
        self.deleted_sequencer
            .push(delete.map(|(c, _)| c.sequencer));
        self.deleted_partition.push(partition);
        self.deleted_offset.push(offset);
    }
}

/// Writes the rows' versions and derives their objects' current rows.
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
        .map_err(SinkError::postgres("upsert object versions"))?;
    let (upserted, tombstoned) = (count(row.get(0)), count(row.get(1)));
    Ok(WriteReport {
        upserted,
        tombstoned,
        stale: rows.objects().saturating_sub(upserted + tombstoned),
        ..WriteReport::default()
    })
}

/// Writes changes seen outside Kafka (reads of the bucket, one per object, in object order) as
/// version rows, and to the history when it is kept.
pub(crate) async fn write_rows(
    client: &impl GenericClient,
    changes: &[Change],
    history: bool,
) -> Result<WriteReport, SinkError> {
    let origins = vec![NO_ORIGIN; changes.len()];
    let deletes = vec![None; changes.len()];
    let rows = Rows {
        changes,
        origins: &origins,
        deletes: &deletes,
    };
    let report = upsert(client, rows).await?;
    if history {
        record_history(client, changes.iter().map(|c| (c, NO_ORIGIN))).await?;
    }
    Ok(report)
}

/// The origin of a change that has no Kafka position (it is written as none).
const NO_ORIGIN: Origin = Origin {
    partition: 0,
    offset: 0,
};

/// Derives the current rows of these objects (pairs of `buckets` and `keys`, repeats
/// allowed) from their versions; returns how many became live and how many not.
pub(crate) async fn derive(
    client: &impl GenericClient,
    buckets: &[&str],
    keys: &[&str],
) -> Result<(u64, u64), SinkError> {
    let statement = client
        .prepare_cached(DERIVE_SQL)
        .await
        .map_err(SinkError::postgres("prepare derive"))?;
    let row = client
        .query_one(&statement, &[&buckets, &keys])
        .await
        .map_err(SinkError::postgres("derive current objects"))?;
    Ok((count(row.get::<_, i64>(0)), count(row.get::<_, i64>(1))))
}

/// Appends `changes` to `object_history` (those already there are left alone).
pub(crate) async fn record_history<'a>(
    client: &impl GenericClient,
    changes: impl Iterator<Item = (&'a Change, Origin)>,
) -> Result<(), SinkError> {
    let mut bucket = Vec::new();
    let mut key = Vec::new();
    let mut version_id = Vec::new();
    let mut event_name = Vec::new();
    let mut sequencer = Vec::new();
    let mut event_time = Vec::new();
    let mut removal = Vec::new();
    let mut size = Vec::new();
    let mut etag = Vec::new();
    let mut content_type = Vec::new();
    let mut user_metadata = Vec::new();
    let mut system_metadata = Vec::new();
    let mut kafka_partition = Vec::new();
    let mut kafka_offset = Vec::new();
    let mut read = Vec::new();
    for (change, origin) in changes {
        bucket.push(change.object.bucket.as_str());
        key.push(change.object.key.as_str());
        version_id.push(version_key(change));
        event_name.push(change.event_name.as_str());
        sequencer.push(change.sequencer);
        event_time.push(change.event_time);
        let (partition, offset) = position(change, origin);
        kafka_partition.push(partition);
        kafka_offset.push(offset);
        read.push(read_at(change));
        let state = match &change.action {
            Action::Upsert(state) => Some(state),
            Action::Remove { .. } => None,
        };
        removal.push(state.is_none());
        size.push(state.and_then(|s| s.size));
        etag.push(state.and_then(|s| s.etag.as_deref()));
        content_type.push(state.and_then(|s| s.content_type.as_deref()));
        user_metadata.push(state.map_or(EMPTY_OBJECT, |s| s.user_metadata.as_json()));
        system_metadata.push(state.map_or(EMPTY_OBJECT, |s| s.system_metadata.as_json()));
    }
    if bucket.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(HISTORY_SQL)
        .await
        .map_err(SinkError::postgres("prepare history"))?;
    let params: [&(dyn ToSql + Sync); 15] = [
        &bucket,
        &key,
        &version_id,
        &event_name,
        &sequencer,
        &event_time,
        &removal,
        &size,
        &etag,
        &content_type,
        &user_metadata,
        &system_metadata,
        &kafka_partition,
        &kafka_offset,
        &read,
    ];
    client
        .execute(&statement, &params)
        .await
        .map_err(SinkError::postgres("append object history"))?;
    Ok(())
}

/// The database's clock (`clock_timestamp()`, not a transaction's start), on a connection of
/// `pool`.
pub(crate) async fn database_now(pool: &Pool) -> Result<time::OffsetDateTime, SinkError> {
    let client = pool
        .get()
        .await
        .map_err(SinkError::pool("getting a connection"))?;
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

/// The changes of a row the database refused, as dead letters: its change, and the
/// permanent delete beside it (from another message, which is not written either). The
/// original payload is not kept in memory for every message, so a dead letter carries the
/// parsed change as JSON: everything the row would have held. Its key is the change's
/// record, so that two refused records of one message are both kept.
fn refused_row(batch: &WriteBatch, index: usize, error: &SinkError) -> Vec<DeadLetter> {
    let reason = format!("database refused the row: {}", database_reason(error));
    let delete = batch.deletes[index].as_ref();
    std::iter::once((&batch.changes[index], batch.origins[index]))
        .chain(delete.map(|(change, origin)| (change, *origin)))
        .map(|(change, origin)| {
            change_dead_letter(change, origin, "database_rejected", reason.clone())
        })
        .collect()
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
