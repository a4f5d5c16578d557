//! The PostgreSQL side of a listing: its checkpoint, the rows its reads
//! produce (merged by the same rule as events, `sink::merge_into_stored`),
//! the keys a reconcile found, its final sweep and its recorded drift.
//!
//! Every write of rows also moves the checkpoint, in the same transaction:
//! a checkpoint never covers a row that is not committed.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use crate::error::SinkError;
use crate::event::{Change, ObjectId};
use crate::s3::ObjectRead;
use crate::sink::{count, database_now, derive, signed, write_rows};

use super::{Kind, Tally, Target};

/// What each read does to the stored row (sql/0004, `objmeta_read_outcome`),
/// judged against the current rows before the reads are written.
const READ_OUTCOMES_SQL: &str = r#"
WITH incoming AS (
    SELECT jsonb_populate_record(NULL::object_metadata, to_jsonb(v)) AS r
    FROM (
        SELECT u.bucket, u.key, u.version_id, u.size, u.etag, u.content_type,
               u.user_metadata::jsonb AS user_metadata,
               u.system_metadata::jsonb AS system_metadata,
               u.event_name, u.event_time, u.sequencer, u.read_at
        FROM unnest(
            $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int8[],
            $12::timestamptz[]
        ) AS u(bucket, key, version_id, size, etag, content_type, user_metadata,
               system_metadata, event_name, event_time, sequencer, read_at)
    ) AS v
)
SELECT (i.r).key, objmeta_read_outcome(i.r, p)
FROM incoming i
LEFT JOIN object_metadata p ON p.bucket = (i.r).bucket AND p.key = (i.r).key
"#;

/// Removes from the current view the live rows of the bucket and prefix
/// that were written before the listing started and whose object the
/// listing did not find, one chunk of the bucket's rows at a time (keyset
/// pagination on the primary key, so that each statement reads at most
/// `$4` rows however big the bucket). The removal is a read of "absent" at
/// the listing's start, written as the state of the object's `null`
/// version: an older event arriving later loses to it, a newer one wins
/// (sql/0004); the caller then derives the rows again. `FOR UPDATE` makes a
/// row a consumer rewrites meanwhile be judged again on its new version
/// (then written after the start: kept). Returns the keys removed, the
/// last key read and how many were read.
const SWEEP_SQL: &str = r#"
WITH scanned AS (
    SELECT t.key FROM object_metadata t
    WHERE t.bucket = $1 AND t.key > $5
    ORDER BY t.key
    LIMIT $4
), doomed AS (
    SELECT t.key FROM object_metadata t
    JOIN scanned s ON t.bucket = $1 AND t.key = s.key
    WHERE starts_with(t.key, $2) AND t.live AND t.updated_at < $3
      AND NOT EXISTS (
          SELECT 1 FROM bucket_listing_keys k
          WHERE k.bucket = $1 AND k.prefix = $2 AND k.kind = 'reconcile' AND k.key = t.key)
    FOR UPDATE OF t
), gone AS (
    SELECT coalesce(array_agg(key ORDER BY key), '{}') AS keys, count(*)::int AS n FROM doomed
), written AS (
    SELECT objmeta_upsert_versions(
        array_fill($1::text, ARRAY[n]), keys, array_fill('null'::text, ARRAY[n]),
        array_fill(NULL::int8, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
        array_fill(NULL::text, ARRAY[n]), array_fill('{}'::text, ARRAY[n]),
        array_fill('{}'::text, ARRAY[n]), array_fill('objmeta:Reconcile'::text, ARRAY[n]),
        array_fill($3::timestamptz, ARRAY[n]), array_fill(objmeta_ns($3), ARRAY[n]),
        array_fill(now(), ARRAY[n]), array_fill(NULL::int4, ARRAY[n]),
        array_fill(NULL::int8, ARRAY[n]), array_fill($3::timestamptz, ARRAY[n]),
        array_fill(NULL::text, ARRAY[n]), array_fill(NULL::timestamptz, ARRAY[n]),
        array_fill(NULL::int8, ARRAY[n]), array_fill(NULL::int4, ARRAY[n]),
        array_fill(NULL::int8, ARRAY[n]))
    FROM gone
)
SELECT (SELECT keys FROM gone), (SELECT max(key) FROM scanned), (SELECT count(*) FROM scanned),
       (SELECT count(*) FROM written)
"#;

/// Rows a sweep statement reads at most, and listed keys a statement of
/// `finish` forgets at most: each statement stays well within the
/// statement timeout however big the bucket.
const CHUNK: i64 = 5000;

/// What a read did to the table (see `objmeta_read_outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    Updated,
    Unchanged,
    /// Cannot be told from the stored event yet: read the object again.
    Unsettled,
    Skipped,
}

impl Outcome {
    fn parse(text: &str) -> Result<Outcome, SinkError> {
        Ok(match text {
            "inserted" => Outcome::Inserted,
            "updated" => Outcome::Updated,
            "unchanged" => Outcome::Unchanged,
            "unsettled" => Outcome::Unsettled,
            "skipped" => Outcome::Skipped,
            other => {
                return Err(SinkError::Schema(format!(
                    "objmeta_read_outcome returned {other:?}: the schema is newer than this objmeta"
                )))
            }
        })
    }
}

/// One object as a read found it.
#[derive(Debug)]
pub struct ReadRow {
    pub key: String,
    pub read: ObjectRead,
    /// When the read started, on the database's clock (a lower bound).
    pub read_at: OffsetDateTime,
}

/// Where a listing stands when it starts.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// When it first started (database clock); kept when it resumes.
    pub started_at: OffsetDateTime,
    /// Last key whose row (and all before it) is written.
    pub position: Option<String>,
    /// What became of the objects before `position`.
    pub tally: Tally,
    pub resumed: bool,
}

/// Where a written batch moves the listing: its new checkpoint (`None`:
/// it stays) and the tally up to it.
#[derive(Clone, Debug)]
pub struct Advance {
    pub position: Option<String>,
    pub tally: Tally,
}

/// The drift a finished reconcile records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Drift {
    pub listed: u64,
    pub missing: u64,
    pub stale: u64,
    pub removed: u64,
    pub errors: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Whether reads go to `object_history` too (`--history`).
    history: bool,
}

impl Store {
    pub fn new(pool: Pool, history: bool) -> Self {
        Store { pool, history }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, SinkError> {
        self.pool
            .get()
            .await
            .map_err(SinkError::pool("getting a connection"))
    }

    /// The database's clock now.
    pub async fn now(&self) -> Result<OffsetDateTime, SinkError> {
        database_now(&self.pool).await
    }

    /// Resumes the listing of `target`, or starts it (after forgetting any
    /// earlier one when `restart`). First takes the listing's own lock, held
    /// until the returned [`SessionLock`] is dropped: two runs of one listing
    /// would share its checkpoint and recorded keys, and the end of one
    /// would make the other's sweep remove what it found.
    pub async fn begin(
        &self,
        target: &Target,
        restart: bool,
    ) -> Result<(Checkpoint, SessionLock), SinkError> {
        let name = format!(
            "objmeta {} {}/{}",
            target.kind.label(),
            target.bucket,
            target.prefix
        );
        let Some(lock) = self.try_lock(&name).await? else {
            return Err(SinkError::Busy(format!(
                "another {} of bucket {:?} prefix {:?} is running on this database schema",
                target.kind.label(),
                target.bucket,
                target.prefix
            )));
        };
        let client = self.client().await?;
        let kind = target.kind.label();
        let key: [&(dyn ToSql + Sync); 3] = [&target.bucket, &target.prefix, &kind];
        if restart {
            client
                .execute(
                    "DELETE FROM bucket_listings WHERE bucket = $1 AND prefix = $2 AND kind = $3",
                    &key,
                )
                .await
                .map_err(SinkError::postgres("forgetting a listing"))?;
        }
        let existing = client
            .query_opt(
                "SELECT started_at, position, tally FROM bucket_listings
                 WHERE bucket = $1 AND prefix = $2 AND kind = $3",
                &key,
            )
            .await
            .map_err(SinkError::postgres("reading a listing checkpoint"))?;
        let checkpoint = match existing {
            Some(row) => Checkpoint {
                started_at: row.get(0),
                position: row.get(1),
                tally: serde_json::from_value(row.get(2)).map_err(|e| {
                    SinkError::Schema(format!("bucket_listings.tally is not a tally: {e}"))
                })?,
                resumed: true,
            },
            None => {
                // Keys an ended listing left (they are forgotten after its end).
                self.forget_keys(target).await?;
                let row = client
                    .query_one(
                        "INSERT INTO bucket_listings (bucket, prefix, kind) VALUES ($1, $2, $3)
                         RETURNING started_at",
                        &key,
                    )
                    .await
                    .map_err(SinkError::postgres("starting a listing"))?;
                Checkpoint {
                    started_at: row.get(0),
                    position: None,
                    tally: Tally::default(),
                    resumed: false,
                }
            }
        };
        Ok((checkpoint, lock))
    }

    /// Writes `rows` and, for a reconcile, records `present` as found; then
    /// moves the checkpoint and the tally to what `advance` makes of the
    /// outcomes. One transaction: all of it or nothing.
    pub async fn write(
        &self,
        target: &Target,
        rows: &[&ReadRow],
        present: &[&str],
        advance: &(dyn Fn(&[Outcome]) -> Advance + Sync),
    ) -> Result<Vec<Outcome>, SinkError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        let outcomes = write_reads(&tx, target, rows, self.history).await?;
        if target.kind == Kind::Reconcile && !present.is_empty() {
            tx.execute(
                "INSERT INTO bucket_listing_keys (bucket, prefix, kind, key)
                 SELECT $1, $2, 'reconcile', k FROM unnest($3::text[]) AS k
                 ON CONFLICT DO NOTHING",
                &[&target.bucket, &target.prefix, &present],
            )
            .await
            .map_err(SinkError::postgres("recording listed keys"))?;
        }
        let advance = advance(&outcomes);
        let tally = serde_json::to_value(advance.tally)
            .map_err(|e| SinkError::Schema(format!("a tally that is not JSON: {e}")))?;
        tx.execute(
            "UPDATE bucket_listings SET position = coalesce($4, position), tally = $5,
                 updated_at = now()
             WHERE bucket = $1 AND prefix = $2 AND kind = $3",
            &[
                &target.bucket,
                &target.prefix,
                &target.kind.label(),
                &advance.position,
                &tally,
            ],
        )
        .await
        .map_err(SinkError::postgres("moving the listing checkpoint"))?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        Ok(outcomes)
    }

    /// Writes changes read from the bucket (one per object version, in object order) as
    /// version rows, in one transaction.
    pub async fn write_changes(&self, changes: &[Change]) -> Result<(), SinkError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        write_rows(&tx, changes, self.history).await?;
        tx.commit().await.map_err(SinkError::postgres("commit"))
    }

    /// Removes the rows of objects the finished listing did not find;
    /// returns how many.
    pub async fn sweep(
        &self,
        target: &Target,
        started_at: OffsetDateTime,
    ) -> Result<u64, SinkError> {
        let (mut removed, mut after) = (0, String::new());
        loop {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(SinkError::postgres("begin"))?;
            let row = tx
                .query_one(
                    SWEEP_SQL,
                    &[&target.bucket, &target.prefix, &started_at, &CHUNK, &after],
                )
                .await
                .map_err(SinkError::postgres("removing rows of vanished objects"))?;
            let gone: Vec<String> = row.get(0);
            let keys: Vec<&str> = gone.iter().map(String::as_str).collect();
            let buckets = vec![target.bucket.as_str(); keys.len()];
            let (_, tombstoned) = derive(&tx, &buckets, &keys).await?;
            tx.commit().await.map_err(SinkError::postgres("commit"))?;
            removed += tombstoned;
            let scanned: i64 = row.get(2);
            match row.get::<_, Option<String>>(1) {
                Some(last) if scanned == CHUNK => after = last,
                _ => return Ok(removed),
            }
        }
    }

    /// Ends the listing: records a reconcile's drift and forgets the
    /// checkpoint in one transaction, then the listed keys (keys left by a
    /// crash in between are forgotten when the next listing starts).
    pub async fn finish(
        &self,
        target: &Target,
        started_at: OffsetDateTime,
        drift: Option<Drift>,
    ) -> Result<(), SinkError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(SinkError::postgres("begin"))?;
        if let Some(d) = drift {
            tx.execute(
                "INSERT INTO reconcile_runs
                     (bucket, prefix, started_at, listed, missing, stale, removed, errors)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (bucket, prefix, started_at) DO UPDATE SET
                     finished_at = now(), listed = excluded.listed, missing = excluded.missing,
                     stale = excluded.stale, removed = excluded.removed, errors = excluded.errors",
                &[
                    &target.bucket,
                    &target.prefix,
                    &started_at,
                    &signed(d.listed),
                    &signed(d.missing),
                    &signed(d.stale),
                    &signed(d.removed),
                    &signed(d.errors),
                ],
            )
            .await
            .map_err(SinkError::postgres("recording the reconcile"))?;
        }
        tx.execute(
            "DELETE FROM bucket_listings WHERE bucket = $1 AND prefix = $2 AND kind = $3",
            &[&target.bucket, &target.prefix, &target.kind.label()],
        )
        .await
        .map_err(SinkError::postgres("ending a listing"))?;
        tx.commit().await.map_err(SinkError::postgres("commit"))?;
        self.forget_keys(target).await
    }

    /// Forgets the keys a listing recorded, a chunk per statement (the
    /// listing's row itself would cascade them in one, too long for a big
    /// bucket).
    async fn forget_keys(&self, target: &Target) -> Result<(), SinkError> {
        let client = self.client().await?;
        loop {
            let deleted = client
                .execute(
                    "DELETE FROM bucket_listing_keys WHERE ctid IN (
                         SELECT ctid FROM bucket_listing_keys
                         WHERE bucket = $1 AND prefix = $2 AND kind = $3 LIMIT $4)",
                    &[&target.bucket, &target.prefix, &target.kind.label(), &CHUNK],
                )
                .await
                .map_err(SinkError::postgres("forgetting listed keys"))?;
            if deleted < CHUNK as u64 {
                return Ok(());
            }
        }
    }
}

/// The last finished reconcile of one bucket and prefix.
#[derive(Clone, Debug)]
pub struct LastRun {
    pub bucket: String,
    pub prefix: String,
    pub drift: Drift,
    pub finished_at: OffsetDateTime,
    pub seconds: f64,
    /// Time since it finished, on the database's clock.
    pub age: Duration,
}

/// A session-level advisory lock, held on a connection of its own (taken
/// out of the pool, so that the pool can never recycle it while the lock is
/// held); dropping it closes the connection, which releases the lock, also
/// when this process dies.
pub struct SessionLock {
    client: deadpool_postgres::ClientWrapper,
}

impl SessionLock {
    /// Whether the connection, and so the lock, is still there.
    pub async fn held(&self) -> bool {
        self.client.simple_query("SELECT 1").await.is_ok()
    }
}

impl Store {
    /// The last finished reconcile of each of `targets` that has one.
    pub async fn last_runs(&self, targets: &[Target]) -> Result<Vec<LastRun>, SinkError> {
        let buckets: Vec<&str> = targets.iter().map(|t| t.bucket.as_str()).collect();
        let prefixes: Vec<&str> = targets.iter().map(|t| t.prefix.as_str()).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT ON (r.bucket, r.prefix) r.bucket, r.prefix, r.listed, r.missing,
                        r.stale, r.removed, r.errors, r.finished_at,
                        extract(epoch FROM r.finished_at - r.started_at)::float8,
                        greatest(extract(epoch FROM now() - r.finished_at), 0)::float8
                 FROM reconcile_runs r
                 JOIN unnest($1::text[], $2::text[]) AS t(bucket, prefix)
                   ON t.bucket = r.bucket AND t.prefix = r.prefix
                 ORDER BY r.bucket, r.prefix, r.finished_at DESC",
                &[&buckets, &prefixes],
            )
            .await
            .map_err(SinkError::postgres("reading the last reconciles"))?;
        Ok(rows
            .iter()
            .map(|row| LastRun {
                bucket: row.get(0),
                prefix: row.get(1),
                drift: Drift {
                    listed: count(row.get(2)),
                    missing: count(row.get(3)),
                    stale: count(row.get(4)),
                    removed: count(row.get(5)),
                    errors: count(row.get(6)),
                },
                finished_at: row.get(7),
                seconds: row.get(8),
                age: Duration::from_secs_f64(row.get::<_, f64>(9)),
            })
            .collect())
    }

    /// Takes the advisory lock named `name` in this schema, if no other
    /// session holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<SessionLock>, SinkError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || ' ' || $1, 0))",
                &[&name],
            )
            .await
            .map_err(SinkError::postgres("trying an advisory lock"))?;
        // Out of the pool either way: a connection that may hold a session
        // lock must never be lent to anyone else.
        let client = deadpool_postgres::Object::take(client);
        Ok(row.get::<_, bool>(0).then_some(SessionLock { client }))
    }
}

/// Writes read rows as versions (and history), deriving their objects'
/// rows; outcomes in the order of `rows`, judged before the write.
async fn write_reads(
    client: &impl GenericClient,
    target: &Target,
    rows: &[&ReadRow],
    history: bool,
) -> Result<Vec<Outcome>, SinkError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let columns = ReadColumns::new(target, rows);
    let statement = client
        .prepare_cached(READ_OUTCOMES_SQL)
        .await
        .map_err(SinkError::postgres("prepare read outcomes"))?;
    let answers = client
        .query(&statement, &columns.params())
        .await
        .map_err(SinkError::postgres("judging reads"))?;
    let mut by_key: HashMap<String, Outcome> = HashMap::with_capacity(answers.len());
    for row in answers {
        let outcome = Outcome::parse(row.get(1))?;
        by_key.insert(row.get(0), outcome);
    }
    let outcomes = rows
        .iter()
        .map(|row| {
            by_key.get(&row.key).copied().ok_or_else(|| {
                SinkError::Schema(format!("no outcome for the read of {:?}", row.key))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let changes: Vec<Change> = rows.iter().map(|row| read_change(target, row)).collect();
    write_rows(client, &changes, history).await?;
    Ok(outcomes)
}

/// A read as the change it makes: the state the store reported, versioned by the read.
fn read_change(target: &Target, row: &ReadRow) -> Change {
    let object = ObjectId {
        bucket: target.bucket.clone(),
        key: row.key.clone(),
    };
    row.read
        .clone()
        .into_change(object, target.kind.event_name(), row.read_at)
}

/// `READ_OUTCOMES_SQL`'s parameters, borrowed from the rows.
struct ReadColumns<'a> {
    bucket: Vec<&'a str>,
    key: Vec<&'a str>,
    version_id: Vec<Option<&'a str>>,
    size: Vec<Option<i64>>,
    etag: Vec<Option<&'a str>>,
    content_type: Vec<Option<&'a str>>,
    user_metadata: Vec<&'a str>,
    system_metadata: Vec<&'a str>,
    event_name: Vec<&'static str>,
    event_time: Vec<OffsetDateTime>,
    sequencer: Vec<i64>,
    read_at: Vec<OffsetDateTime>,
}

impl<'a> ReadColumns<'a> {
    fn new(target: &'a Target, rows: &'a [&'a ReadRow]) -> Self {
        let event_name = target.kind.event_name();
        ReadColumns {
            bucket: rows.iter().map(|_| target.bucket.as_str()).collect(),
            key: rows.iter().map(|r| r.key.as_str()).collect(),
            version_id: rows.iter().map(|r| r.read.version_id.as_deref()).collect(),
            size: rows.iter().map(|r| r.read.size).collect(),
            etag: rows.iter().map(|r| r.read.etag.as_deref()).collect(),
            content_type: rows
                .iter()
                .map(|r| r.read.content_type.as_deref())
                .collect(),
            user_metadata: rows
                .iter()
                .map(|r| r.read.user_metadata.as_json())
                .collect(),
            system_metadata: rows
                .iter()
                .map(|r| r.read.system_metadata.as_json())
                .collect(),
            event_name: rows.iter().map(|_| event_name).collect(),
            event_time: rows.iter().map(|r| r.read.last_modified).collect(),
            sequencer: rows.iter().map(|r| r.read.sequencer()).collect(),
            read_at: rows.iter().map(|r| r.read_at).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
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
            &self.read_at,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_parse_and_unknown_ones_are_refused() {
        assert_eq!(Outcome::parse("unsettled").unwrap(), Outcome::Unsettled);
        assert!(Outcome::parse("maybe").is_err());
    }
}
