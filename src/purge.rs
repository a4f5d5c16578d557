//! Retention: tombstones, permanently deleted versions and history rows are kept only as long
//! as they can matter (docs/versions.md, "Retention"). One replica at a time purges (an
//! advisory lock, so N replicas do not race each other through the same rows), in small
//! transactions, beside consumption and never blocking it. Every round also refreshes the
//! row-count gauges of the tables.
//!
//! What goes, and why it cannot change a current row:
//! - an object that is not live, unchanged for `--tombstone-retention`, none of whose
//!   versions exists any more: its row and all its versions (an older event still in the
//!   topic could otherwise revive it: the retention must exceed the topic's retention plus
//!   the worst consumer lag). An object under a delete marker keeps its older versions: S3
//!   serves them again once the marker is deleted;
//! - a permanently deleted version of a live object, deleted longer ago than the same
//!   retention (a live object's row is one of its versions that is not gone);
//! - history rows whose event is older than `--history-retention`.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_util::sync::CancellationToken;

use crate::error::SinkError;
use crate::metrics::{Metrics, TABLES};
use crate::sink::count;

/// Rows one purge statement deletes at most: each transaction stays short.
const CHUNK: i64 = 1000;

/// How long each kind of row is kept (`None`: forever).
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    pub tombstones: Option<Duration>,
    pub history: Option<Duration>,
}

/// One kind of purge: its statement (`$1` the retention in seconds, `$2` the chunk size;
/// returns the rows deleted) and the table label of its counter.
struct Purge {
    table: &'static str,
    sql: &'static str,
}

/// Objects not live and unchanged for the retention, with their versions, when none of
/// their versions still exists: an object under a delete marker keeps its older versions,
/// which S3 serves again once the marker is deleted. `SKIP LOCKED`: a row a consumer is
/// writing is left for the next round.
const TOMBSTONES: Purge = Purge {
    table: "object_metadata",
    sql: r#"
WITH doomed AS (
    SELECT m.bucket, m.key FROM object_metadata m
    WHERE NOT m.live AND m.updated_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (
          SELECT 1 FROM object_versions v
          WHERE v.bucket = m.bucket AND v.key = m.key
            AND v.sequencer IS NOT NULL AND v.deleted_at IS NULL AND NOT v.gone)
    ORDER BY m.updated_at
    LIMIT $2
    FOR UPDATE OF m SKIP LOCKED
), versions AS (
    DELETE FROM object_versions v USING doomed d
    WHERE v.bucket = d.bucket AND v.key = d.key
    RETURNING 1
), rows AS (
    DELETE FROM object_metadata m USING doomed d
    WHERE m.bucket = d.bucket AND m.key = d.key
    RETURNING 1
)
SELECT (SELECT count(*) FROM rows) + (SELECT count(*) FROM versions)
"#,
};

/// Permanently deleted versions of live objects, deleted longer ago than the retention.
const GONE_VERSIONS: Purge = Purge {
    table: "object_versions",
    sql: r#"
WITH doomed AS (
    SELECT v.ctid FROM object_versions v
    WHERE v.gone AND v.version_deleted_at < now() - make_interval(secs => $1)
      AND EXISTS (SELECT 1 FROM object_metadata m
                  WHERE m.bucket = v.bucket AND m.key = v.key AND m.live)
    LIMIT $2
    FOR UPDATE OF v SKIP LOCKED
), gone AS (
    DELETE FROM object_versions v USING doomed d WHERE v.ctid = d.ctid RETURNING 1
)
SELECT count(*) FROM gone
"#,
};

/// History rows whose event is older than the retention.
const HISTORY: Purge = Purge {
    table: "object_history",
    sql: r#"
WITH doomed AS (
    SELECT ctid FROM object_history
    WHERE event_time < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM object_history h USING doomed d WHERE h.ctid = d.ctid RETURNING 1
)
SELECT count(*) FROM gone
"#,
};

/// Runs a round every `every` until `shutdown`.
pub async fn run(
    pool: Pool,
    retention: Retention,
    every: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = round(&pool, retention, &metrics, &shutdown) => result,
        };
        let label = match &result {
            Ok(Some(_)) => "done",
            Ok(None) => "skipped",
            Err(_) => "failed",
        };
        metrics.purge_runs.with_label_values(&[label]).inc();
        match result {
            Ok(Some(purged)) if purged > 0 => {
                tracing::info!(rows = purged, "purged rows past their retention")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge round failed; trying again next round"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One round: the gauges, then, under the lock, every purge until it runs dry. Returns the
/// rows purged, or `None` when another replica holds the lock.
pub async fn round(
    pool: &Pool,
    retention: Retention,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<u64>, SinkError> {
    let client = pool
        .get()
        .await
        .map_err(SinkError::pool("getting a connection"))?;
    count_rows(&client, metrics).await?;
    let purges = [
        (TOMBSTONES, retention.tombstones),
        (GONE_VERSIONS, retention.tombstones),
        (HISTORY, retention.history),
    ];
    if purges.iter().all(|(_, keep)| keep.is_none()) {
        return Ok(Some(0));
    }
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || ' objmeta purge', 0))",
            &[],
        )
        .await
        .map_err(SinkError::postgres("taking the purge lock"))?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let purged = purge_all(&client, &purges, metrics, shutdown).await;
    // Released on this connection, whatever the purge did; the server releases it anyway if
    // the connection breaks.
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended(current_schema() || ' objmeta purge', 0))",
            &[],
        )
        .await;
    if unlocked.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
    purged.map(Some)
}

async fn purge_all(
    client: &impl GenericClient,
    purges: &[(Purge, Option<Duration>)],
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<u64, SinkError> {
    let mut total = 0;
    for (purge, keep) in purges {
        let Some(keep) = keep else { continue };
        let seconds = keep.as_secs_f64();
        loop {
            if shutdown.is_cancelled() {
                return Ok(total);
            }
            let deleted = count(
                client
                    .query_one(purge.sql, &[&seconds, &CHUNK])
                    .await
                    .map_err(SinkError::postgres("purging rows past their retention"))?
                    .get(0),
            );
            metrics
                .purged_rows
                .with_label_values(&[purge.table])
                .inc_by(deleted);
            total += deleted;
            if deleted < CHUNK as u64 {
                break;
            }
        }
    }
    Ok(total)
}

/// Estimates from the planner's statistics: exact counts of big tables cost a scan.
async fn count_rows(client: &impl GenericClient, metrics: &Metrics) -> Result<(), SinkError> {
    let rows = client
        .query(
            "SELECT c.relname, greatest(c.reltuples, 0)::float8 FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1)",
            &[&TABLES.as_slice()],
        )
        .await
        .map_err(SinkError::postgres("counting table rows"))?;
    for row in rows {
        let table: String = row.get(0);
        metrics
            .table_rows
            .with_label_values(&[&table])
            .set(row.get::<_, f64>(1));
    }
    Ok(())
}
