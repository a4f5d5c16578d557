//! Versioned buckets as S3 sees them, through real Kafka and PostgreSQL: deleting the newest
//! version reveals the previous one, deleting a delete marker revives the object, and every
//! delivery (in order, reversed, duplicated; one event per transaction or all in one batch)
//! ends in the same rows. And the history of one object's metadata: one row per change,
//! whatever the batches, none added by a replay.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{minio_message, TestBed};
use serde_json::{json, Value};

const T0: u64 = 1_764_000_000_000_000_000; // 2025-11-24, in ns
const BUCKET: &str = "versioned";

type Message = (String, Vec<u8>);

fn put(key: &str, at: u64, version: &str, id: &str) -> Message {
    let metadata = [("X-Amz-Meta-Id", id)];
    minio_message(
        "s3:ObjectCreated:Put",
        BUCKET,
        key,
        T0 + at,
        Some(version),
        &metadata,
    )
}

fn marker(key: &str, at: u64, version: &str) -> Message {
    let name = "s3:ObjectRemoved:DeleteMarkerCreated";
    minio_message(name, BUCKET, key, T0 + at, Some(version), &[])
}

fn delete_version(key: &str, at: u64, version: &str) -> Message {
    minio_message(
        "s3:ObjectRemoved:Delete",
        BUCKET,
        key,
        T0 + at,
        Some(version),
        &[],
    )
}

/// The histories, one key each, in the order they happened.
fn histories() -> Vec<Message> {
    vec![
        // put v1, put v2, delete v2: v1 is current again, with v1's metadata
        put("revealed", 10, "v1", "1"),
        put("revealed", 20, "v2", "2"),
        delete_version("revealed", 30, "v2"),
        // put v1, delete marker m1, delete m1: v1 is back
        put("revived", 10, "v1", "1"),
        marker("revived", 20, "m1"),
        delete_version("revived", 30, "m1"),
        // a delete marker alone: not current
        marker("marker-only", 10, "m1"),
        // deleting an older version keeps the newest
        put("older-deleted", 10, "v1", "1"),
        put("older-deleted", 20, "v2", "2"),
        delete_version("older-deleted", 30, "v1"),
        // every version deleted: not current
        put("all-deleted", 10, "v1", "1"),
        put("all-deleted", 20, "v2", "2"),
        delete_version("all-deleted", 30, "v2"),
        delete_version("all-deleted", 40, "v1"),
    ]
}

/// What S3 serves after `histories()`: key -> (version id, user metadata).
fn expected() -> BTreeMap<String, (String, Value)> {
    [
        ("older-deleted", "v2", "2"),
        ("revealed", "v1", "1"),
        ("revived", "v1", "1"),
    ]
    .into_iter()
    .map(|(key, version, id)| (key.to_string(), (version.to_string(), json!({"id": id}))))
    .collect()
}

async fn current(bed: &TestBed) -> BTreeMap<String, (String, Value)> {
    bed.db()
        .await
        .query(
            "SELECT key, version_id, user_metadata FROM current_objects WHERE bucket = $1",
            &[&BUCKET],
        )
        .await
        .expect("read current_objects")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Every version row: (key, version) -> (delete marker, gone, what deleted it).
async fn versions(bed: &TestBed) -> BTreeMap<(String, String), (bool, bool, Option<String>)> {
    bed.db()
        .await
        .query(
            "SELECT key, version_id, delete_marker, gone, version_deleted_by
             FROM object_versions WHERE bucket = $1",
            &[&BUCKET],
        )
        .await
        .expect("read object_versions")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect()
}

async fn history_rows(bed: &TestBed) -> i64 {
    bed.db()
        .await
        .query_one("SELECT count(*) FROM object_history", &[])
        .await
        .expect("count history")
        .get(0)
}

/// Publishes the messages one at a time, each committed before the next is published: one
/// event per transaction.
async fn one_per_transaction(bed: &TestBed, messages: &[Message]) {
    let objmeta = bed.start(&[]);
    for (n, message) in messages.iter().enumerate() {
        bed.publish(std::slice::from_ref(message)).await;
        bed.wait_committed(n as i64 + 1, Duration::from_secs(60))
            .await;
    }
    objmeta.stop().await.expect("objmeta stops");
}

/// Publishes everything before objmeta starts: the messages are read in one batch.
async fn all_at_once(bed: &TestBed, messages: &[Message]) {
    bed.publish(messages).await;
    let objmeta = bed.start(&[]);
    bed.wait_committed(messages.len() as i64, Duration::from_secs(60))
        .await;
    objmeta.stop().await.expect("objmeta stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_histories_end_as_s3_serves_them_in_any_delivery() {
    let history = histories();
    let mut reversed = history.clone();
    reversed.reverse();
    let mut duplicated = history.clone();
    duplicated.extend(reversed.iter().cloned());
    duplicated.extend(history.iter().cloned());

    let in_order = TestBed::new("versions_in_order", 1).await;
    one_per_transaction(&in_order, &history).await;
    let backwards = TestBed::new("versions_reversed", 1).await;
    one_per_transaction(&backwards, &reversed).await;
    let together = TestBed::new("versions_one_batch", 2).await;
    all_at_once(&together, &duplicated).await;
    let backwards_together = TestBed::new("versions_reversed_one_batch", 1).await;
    all_at_once(&backwards_together, &reversed).await;

    let first = versions(&in_order).await;
    for bed in [&in_order, &backwards, &together, &backwards_together] {
        assert_eq!(current(bed).await, expected(), "{}", bed.name);
        assert_eq!(versions(bed).await, first, "{}", bed.name);
        assert!(bed.dead_letters().await.is_empty(), "{}", bed.name);
        // One history row per distinct change, duplicates or not.
        assert_eq!(
            history_rows(bed).await,
            history.len() as i64,
            "{}",
            bed.name
        );
    }
    let deleted = Some("s3:ObjectRemoved:Delete".to_string());
    let key = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        first[&key("revealed", "v2")],
        (false, true, deleted.clone())
    );
    assert_eq!(first[&key("revealed", "v1")], (false, false, None));
    assert_eq!(first[&key("revived", "m1")], (true, true, deleted.clone()));
    assert_eq!(first[&key("marker-only", "m1")], (true, false, None));
    assert_eq!(first.len(), 9);

    // The tombstones still say why the objects are not current.
    let rows = in_order
        .db()
        .await
        .query(
            "SELECT key, live FROM object_metadata WHERE bucket = $1 AND key IN ('marker-only', 'all-deleted')",
            &[&BUCKET],
        )
        .await
        .expect("read tombstones");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| !r.get::<_, bool>(1)));
}

/// The original guide's flow: an upload with `id` 1843, then a self-copy replacing it with
/// 1844. Two history rows whether both events land in one batch or in two, the metadata as
/// of a time between them is 1843, and a replay of the whole topic by a new consumer group
/// adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_one_object_is_one_row_per_change_whatever_the_batches() {
    let upload = minio_message(
        "s3:ObjectCreated:Put",
        "photos",
        "cat.jpg",
        T0 + 1_000_000_000,
        None,
        &[("X-Amz-Meta-Id", "1843")],
    );
    let copy = minio_message(
        "s3:ObjectCreated:Copy",
        "photos",
        "cat.jpg",
        T0 + 2_000_000_000,
        None,
        &[("X-Amz-Meta-Id", "1844")],
    );
    let messages = [upload, copy];
    let together = TestBed::new("history_one_batch", 1).await;
    all_at_once(&together, &messages).await;
    let apart = TestBed::new("history_two_batches", 1).await;
    one_per_transaction(&apart, &messages).await;

    let want = vec![
        ("1843".to_string(), "s3:ObjectCreated:Put".to_string()),
        ("1844".to_string(), "s3:ObjectCreated:Copy".to_string()),
    ];
    assert_eq!(photo_ids(&together).await, want);
    assert_eq!(photo_ids(&apart).await, want);

    // As of a time between the two changes.
    let as_of: String = apart
        .db()
        .await
        .query_one(
            "SELECT user_metadata->>'id' FROM object_history
             WHERE bucket = 'photos' AND key = 'cat.jpg'
               AND event_time <= to_timestamp($1::float8)
             ORDER BY sequencer DESC LIMIT 1",
            &[&((T0 + 1_500_000_000) as f64 / 1e9)],
        )
        .await
        .expect("as-of query")
        .get(0);
    assert_eq!(as_of, "1843");
    // The change of id, as object_changes shows it.
    let changed: Vec<(String, String)> = apart
        .db()
        .await
        .query(
            "SELECT previous_user_metadata->>'id', user_metadata->>'id' FROM object_changes
             WHERE bucket = 'photos' AND key = 'cat.jpg' AND previous_event_name IS NOT NULL
               AND (user_metadata->>'id') IS DISTINCT FROM (previous_user_metadata->>'id')",
            &[],
        )
        .await
        .expect("object_changes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(changed, vec![("1843".to_string(), "1844".to_string())]);

    // A new consumer group reads the whole topic again into the same schema.
    let mut replay = apart.clone();
    replay.group = format!("{}-replay", apart.group);
    let objmeta = replay.start(&[]);
    replay
        .wait_committed(messages.len() as i64, Duration::from_secs(60))
        .await;
    objmeta.stop().await.expect("objmeta stops");
    assert_eq!(photo_ids(&apart).await, want);
}

/// The history of photos/cat.jpg: (id, event name) by sequencer.
async fn photo_ids(bed: &TestBed) -> Vec<(String, String)> {
    bed.db()
        .await
        .query(
            "SELECT user_metadata->>'id', event_name FROM object_history
             WHERE bucket = 'photos' AND key = 'cat.jpg' ORDER BY sequencer",
            &[],
        )
        .await
        .expect("read history")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A put of `key` now (its event time is the sequencer): inside any retention.
fn put_now(bucket: &str, key: &str, version: Option<&str>) -> Message {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    minio_message(
        "s3:ObjectCreated:Put",
        bucket,
        key,
        now,
        version,
        &[("X-Amz-Meta-Id", key)],
    )
}

fn marker_now(bucket: &str, key: &str, version: &str) -> Message {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let name = "s3:ObjectRemoved:DeleteMarkerCreated";
    minio_message(name, bucket, key, now, Some(version), &[])
}

fn delete_now(bucket: &str, key: &str, version: Option<&str>) -> Message {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    minio_message("s3:ObjectRemoved:Delete", bucket, key, now, version, &[])
}

async fn keys_of(bed: &TestBed, sql: &str) -> Vec<String> {
    bed.db()
        .await
        .query(sql, &[])
        .await
        .expect("query keys")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Retention: tombstones and permanently deleted versions unchanged longer than
/// --tombstone-retention go (with the tombstones' versions), history older than
/// --history-retention goes, everything younger stays, and purges running while a stream of
/// puts is consumed change no current row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_remove_what_is_past_retention_and_no_current_row() {
    let bed = TestBed::new("retention", 2).await;
    let objmeta = bed.start(&[
        "--tombstone-retention",
        "8s",
        "--history-retention",
        "365d",
        "--purge-every",
        "1s",
    ]);
    let bucket = "kept";
    // History from 2025 (older than 365 days): purged at once.
    let old = [
        minio_message("s3:ObjectCreated:Put", bucket, "old-history", T0, None, &[]),
        minio_message(
            "s3:ObjectRemoved:Delete",
            bucket,
            "old-history",
            T0 + 5,
            None,
            &[],
        ),
    ];
    let early = [
        put_now(bucket, "gone-early", None),
        delete_now(bucket, "gone-early", None),
        put_now(bucket, "live", None),
        put_now(bucket, "versioned", Some("v1")),
        put_now(bucket, "versioned", Some("v2")),
        delete_now(bucket, "versioned", Some("v1")),
        // Under a delete marker: not current, but v1 exists and comes back when the marker
        // is deleted, so neither goes.
        put_now(bucket, "marked", Some("v1")),
        marker_now(bucket, "marked", "m1"),
    ];
    let mut sent = 0;
    for batch in [&old[..], &early[..]] {
        bed.publish(batch).await;
        sent += batch.len() as i64;
    }
    bed.wait_committed(sent, Duration::from_secs(60)).await;
    // A stream of puts while the purges run, and a tombstone too young to go.
    let stream: Vec<Message> = (0..400)
        .map(|i| put_now(bucket, &format!("stream-{i:03}"), None))
        .collect();
    let started = std::time::Instant::now();
    for chunk in stream.chunks(20) {
        bed.publish(chunk).await;
        sent += chunk.len() as i64;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while started.elapsed() < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = [
        put_now(bucket, "gone-late", None),
        delete_now(bucket, "gone-late", None),
    ];
    bed.publish(&late).await;
    sent += late.len() as i64;
    bed.wait_committed(sent, Duration::from_secs(60)).await;
    common::wait_until(
        Duration::from_secs(30),
        "the early tombstones purged",
        || async {
            let sql = "SELECT key FROM object_metadata WHERE key IN ('gone-early', 'old-history')";
            keys_of(&bed, sql).await.is_empty().then_some(())
        },
    )
    .await;

    let tombstones = keys_of(
        &bed,
        "SELECT key FROM object_metadata WHERE NOT live ORDER BY key",
    )
    .await;
    assert_eq!(
        tombstones,
        vec!["gone-late", "marked"],
        "the young tombstone stays, and so does an object under a delete marker"
    );
    let versions = keys_of(
        &bed,
        "SELECT key || '/' || version_id FROM object_versions
         WHERE key IN ('versioned', 'gone-early', 'live', 'marked') ORDER BY 1",
    )
    .await;
    assert_eq!(
        versions,
        vec!["live/null", "marked/m1", "marked/v1", "versioned/v2"],
        "gone versions and tombstones' versions go"
    );
    let live = keys_of(&bed, "SELECT key FROM current_objects ORDER BY key").await;
    let mut want: Vec<String> = stream
        .iter()
        .map(|(k, _)| k.trim_start_matches("kept/").to_string())
        .chain(["live".to_string(), "versioned".to_string()])
        .collect();
    want.sort();
    assert_eq!(live, want, "no current row changed");
    let history = keys_of(
        &bed,
        "SELECT DISTINCT key FROM object_history WHERE key LIKE '%history%'",
    )
    .await;
    assert!(
        history.is_empty(),
        "history older than its retention goes: {history:?}"
    );
    let kept = keys_of(
        &bed,
        "SELECT DISTINCT key FROM object_history WHERE key = 'gone-early'",
    )
    .await;
    assert_eq!(
        kept,
        vec!["gone-early"],
        "young history stays, also of purged objects"
    );
    let purged = TestBed::metric_sum(objmeta.http_port, "objmeta_purged_rows_total")
        .await
        .expect("purge counter");
    assert!(purged >= 5.0, "{purged}");
    objmeta.stop().await.expect("objmeta stops");
}

/// A backfill of a versioned bucket (a real versitygw keeping versions) writes every version
/// and delete marker: the current rows are the bucket's, and a later permanent delete of the
/// current version, published as MinIO would, reveals the previous version's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_a_versioned_bucket_writes_every_version() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let server = common::bucket::PrivateS3::versioning();
    let client = common::bucket::admin_at(&server.endpoint(), None);
    let bucket = common::bucket::Bucket::create_with("versioned", client.clone()).await;
    client
        .put_bucket_versioning()
        .bucket(&bucket.name)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
    let put = |key: &'static str, id: &'static str| {
        let client = client.clone();
        let name = bucket.name.clone();
        async move {
            client
                .put_object()
                .bucket(name)
                .key(key)
                .metadata("id", id)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"data"))
                .send()
                .await
                .expect("put")
                .version_id()
                .expect("a version id")
                .to_string()
        }
    };
    let v1 = put("doc", "1").await;
    let v2 = put("doc", "2").await;
    put("gone", "3").await;
    client
        .delete_object()
        .bucket(&bucket.name)
        .key("gone")
        .send()
        .await
        .expect("delete marker");

    let bed = TestBed::new("versioned_backfill", 1).await;
    let config = bed.listing_config("backfill", &server.endpoint(), &bucket.name, &[]);
    let summary = common::run_listing(objmeta::listing::Kind::Backfill, &config).await;
    assert!(summary.succeeded(), "{summary:?}");
    assert_eq!(
        summary.versions, 3,
        "v1 of doc, gone's version and its marker: {summary:?}"
    );
    let db = bed.db().await;
    let rows: Vec<(String, String, bool, Value)> = db
        .query(
            "SELECT key, version_id, delete_marker, user_metadata FROM object_versions
             WHERE bucket = $1 ORDER BY key, sequencer, version_id",
            &[&bucket.name],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let docs: Vec<&(String, String, bool, Value)> = rows.iter().filter(|r| r.0 == "doc").collect();
    assert_eq!(docs.len(), 2, "{rows:?}");
    assert!(
        docs.iter().any(|r| r.1 == v1 && r.3 == json!({"id": "1"})),
        "{rows:?}"
    );
    assert!(
        docs.iter().any(|r| r.1 == v2 && r.3 == json!({"id": "2"})),
        "{rows:?}"
    );
    let gone: Vec<&(String, String, bool, Value)> = rows.iter().filter(|r| r.0 == "gone").collect();
    assert_eq!(
        gone.iter().filter(|r| r.2).count(),
        1,
        "one delete marker: {rows:?}"
    );
    let live: Vec<(String, Option<String>, Value)> = db
        .query(
            "SELECT key, version_id, user_metadata FROM current_objects WHERE bucket = $1",
            &[&bucket.name],
        )
        .await
        .expect("current")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        live,
        vec![("doc".to_string(), Some(v2.clone()), json!({"id": "2"}))]
    );

    // The current version is deleted for good: the event reveals v1, which only the versions
    // pass made known.
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let event = minio_message(
        "s3:ObjectRemoved:Delete",
        &bucket.name,
        "doc",
        now,
        Some(&v2),
        &[],
    );
    let objmeta = bed.start(&[]);
    bed.publish(&[event]).await;
    bed.wait_committed(1, Duration::from_secs(60)).await;
    objmeta.stop().await.expect("objmeta stops");
    let revealed: Value = db
        .query_one(
            "SELECT user_metadata FROM current_objects WHERE bucket = $1 AND key = 'doc'",
            &[&bucket.name],
        )
        .await
        .expect("doc is current")
        .get(0);
    assert_eq!(revealed, json!({"id": "1"}));
}
