//! Dead letters keep everything: one row per refused record (two refused
//! records of one message are two rows), a dead letter the database refuses
//! is stored stripped down instead of ending the process, the metric counts
//! rows actually inserted, and replicas of the previous version keep
//! writing dead letters into the migrated schema during a rolling upgrade.

mod common;

use std::time::Duration;

use common::{minio_message, TestBed};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;

const T0: u64 = 1_764_000_000_000_000_000;

/// A dead letter as users see it, from `dead_letters`: offset, record,
/// payload, reason.
type Row = (i64, i32, Option<Vec<u8>>, String);

async fn rows(bed: &TestBed) -> Vec<Row> {
    bed.dead_letter_records()
        .await
        .into_iter()
        .map(|d| (d.offset, d.record, d.payload, d.reason))
        .collect()
}

/// One message holding the records of several single-record messages.
fn multi_record(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut message: Value = serde_json::from_slice(&parts[0]).unwrap();
    let records: Vec<Value> = parts
        .iter()
        .map(|p| serde_json::from_slice::<Value>(p).unwrap()["Records"][0].clone())
        .collect();
    message["Records"] = records.into();
    serde_json::to_vec(&message).unwrap()
}

fn put(key: &str, sequencer: u64) -> Vec<u8> {
    minio_message("s3:ObjectCreated:Put", "dl", key, sequencer, None, &[]).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refused_records_of_one_message_are_two_dead_letters() {
    let bed = TestBed::new("dl_records", 1).await;
    // Keys PostgreSQL cannot index (a btree entry holds at most ~2700
    // bytes; random text does not compress below that), around a good one.
    let unindexable = || Alphanumeric.sample_string(&mut rand::rng(), 9000);
    let message = multi_record(&[
        put(&unindexable(), T0),
        put("fine.txt", T0),
        put(&unindexable(), T0 + 1),
    ]);
    bed.publish_raw(0, Some(b"dl/multi"), Some(&message)).await;
    let service = bed.start(&[]);
    bed.wait_committed(1, Duration::from_secs(60)).await;
    let stored = r#"objmeta_dead_letters_total{reason="database_rejected"}"#;
    let stored = TestBed::metric(service.http_port, stored).await;
    let rejected = r#"objmeta_rows_written_total{result="rejected"}"#;
    let rejected = TestBed::metric(service.http_port, rejected).await;
    service.stop().await.unwrap();

    let dead = rows(&bed).await;
    let keys: Vec<(i64, i32)> = dead.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(keys, vec![(0, 0), (0, 2)], "records 0 and 2 refused");
    for (_, _, payload, reason) in &dead {
        assert!(reason.contains("54000"), "{reason}");
        let change: Value = serde_json::from_slice(payload.as_deref().unwrap()).unwrap();
        assert_eq!(change["key"].as_str().map(str::len), Some(9000));
    }
    let fine: i64 = bed
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM current_objects WHERE key = 'fine.txt'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fine, 1, "the good record of the message is written");
    assert_eq!(rejected, Some(2.0));
    assert_eq!(stored, Some(2.0), "both rows counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_counts_only_rows_actually_inserted() {
    let bed = TestBed::new("dl_count", 1).await;
    objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .unwrap();
    // The dead letter of offset 0 is stored already, as after a run whose
    // offset commit was lost: the message is read again.
    bed.db()
        .await
        .execute(
            r#"INSERT INTO dead_letter_records (topic, partition, "offset", reason)
               VALUES ($1, 0, 0, 'stored by an earlier run')"#,
            &[&bed.topic],
        )
        .await
        .unwrap();
    bed.publish_raw(0, Some(b"k"), Some(b"not json")).await;
    bed.publish_raw(0, Some(b"k"), Some(b"not json either"))
        .await;
    let service = bed.start(&[]);
    bed.wait_committed(2, Duration::from_secs(60)).await;
    let series = r#"objmeta_dead_letters_total{reason="invalid_json"}"#;
    let counted = TestBed::metric(service.http_port, series).await;
    service.stop().await.unwrap();
    let dead = rows(&bed).await;
    let reasons: Vec<&str> = dead.iter().map(|d| d.3.as_str()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert_eq!(dead[0].3, "stored by an earlier run");
    assert_eq!(counted, Some(1.0), "only offset 1 was inserted");
}

/// A refused row can hold two changes of other messages: a version's put and its permanent
/// delete. Both are dead-lettered; the delete was lost before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_row_dead_letters_its_delete_too() {
    let bed = TestBed::new("dl_version_row", 1).await;
    let key = Alphanumeric.sample_string(&mut rand::rng(), 9000);
    let put = minio_message("s3:ObjectCreated:Put", "dl", &key, T0, Some("v2"), &[]);
    let delete = minio_message(
        "s3:ObjectRemoved:Delete",
        "dl",
        &key,
        T0 + 1,
        Some("v2"),
        &[],
    );
    bed.publish(&[put, delete]).await;
    let service = bed.start(&[]);
    bed.wait_committed(2, Duration::from_secs(60)).await;
    service.stop().await.unwrap();
    let dead: Vec<(i64, String)> = rows(&bed)
        .await
        .into_iter()
        .map(|(offset, _, payload, _)| {
            let change: Value = serde_json::from_slice(payload.as_deref().unwrap()).unwrap();
            (offset, change["eventName"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        dead,
        vec![
            (0, "s3:ObjectCreated:Put".to_string()),
            (1, "s3:ObjectRemoved:Delete".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_database_refuses_is_stored_stripped_down() {
    let bed = TestBed::new("dl_refused", 1).await;
    objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .unwrap();
    // An operator's constraint (or a database encoding without é) refusing
    // some reasons: non-ASCII text, and the word "poison".
    bed.db()
        .await
        .batch_execute(
            "ALTER TABLE dead_letter_records ADD CONSTRAINT picky CHECK \
             (octet_length(reason) = char_length(reason) AND reason NOT LIKE '%poison%')",
        )
        .await
        .unwrap();
    let bad_sequencer = |key: &str, sequencer: &str| {
        let mut value: Value = serde_json::from_slice(&put(key, T0)).unwrap();
        value["Records"][0]["s3"]["object"]["sequencer"] = sequencer.into();
        serde_json::to_vec(&value).unwrap()
    };
    let accented = bad_sequencer("a.txt", "12\u{e9}4");
    let poison = bad_sequencer("p.txt", "poison");
    bed.publish_raw(0, Some(b"accented"), Some(&accented)).await;
    bed.publish_raw(0, Some(b"poison"), Some(&poison)).await;
    bed.publish_raw(0, Some(b"plain"), Some(b"not json")).await;
    bed.publish_raw(0, Some(b"dl/ok.txt"), Some(&put("ok.txt", T0)))
        .await;
    let service = bed.start(&["--batch-max-age", "2s"]);
    bed.wait_committed(4, Duration::from_secs(60)).await;
    let series = r#"objmeta_dead_letters_total{reason="bad_sequencer"}"#;
    let counted = TestBed::metric(service.http_port, series).await;
    assert!(!service.task.is_finished(), "objmeta keeps running");
    service.stop().await.expect("a clean stop, no fatal error");

    let dead = rows(&bed).await;
    let reasons: Vec<&str> = dead.iter().map(|d| d.3.as_str()).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    let (_, record, payload, reason) = &dead[0];
    assert_eq!(*record, 0);
    assert_eq!(payload.as_deref(), Some(&accented[..]), "bytes kept");
    assert!(
        reason.contains(r#"12\u{e9}4"#) && reason.contains("picky"),
        "{reason}"
    );
    let (_, _, payload, reason) = &dead[1];
    assert_eq!(payload, &None, "stored without the refused content");
    assert!(
        reason.contains("refused") && reason.contains("picky"),
        "{reason}"
    );
    assert!(dead[2].3.contains("invalid JSON"), "{}", dead[2].3);
    assert_eq!(counted, Some(2.0));
    let ok: i64 = bed
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM current_objects WHERE key = 'ok.txt'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 1, "the batch's row is written");
}

/// The previous version's dead-letter statement, verbatim.
const OLD_DEAD_LETTER_SQL: &str = r#"
INSERT INTO dead_letters (topic, partition, "offset", message_key, payload, reason)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
ON CONFLICT (topic, partition, "offset") DO NOTHING
"#;

/// What the previous version's migrations left: 0001 and its bookkeeping.
const PREVIOUS_SCHEMA: &str = "
CREATE TABLE objmeta_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO objmeta_migrations (version, name) VALUES (1, '0001_object_metadata.sql');
";

async fn old_replica_insert(db: &tokio_postgres::Client, topic: &str, offset: i64, reason: &str) {
    db.execute(
        OLD_DEAD_LETTER_SQL,
        &[
            &vec![topic],
            &vec![0i32],
            &vec![offset],
            &vec![Some(&b"key"[..])],
            &vec![Some(&b"payload"[..])],
            &vec![reason],
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("the old statement fails on the migrated schema: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_replicas_keep_writing_dead_letters_during_a_rolling_upgrade() {
    let bed = TestBed::new("dl_upgrade", 1).await;
    let db = bed.db().await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path = {schema};",
        schema = bed.schema
    ))
    .await
    .unwrap();
    db.batch_execute(include_str!("../sql/0001_object_metadata.sql"))
        .await
        .unwrap();
    db.batch_execute(PREVIOUS_SCHEMA).await.unwrap();
    old_replica_insert(&db, &bed.topic, 1, "written befo").await;

    // The new version migrates while an old replica is still running.
    let applied = objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .unwrap();
    assert!(applied >= 1, "the new migrations applied");
    old_replica_insert(&db, &bed.topic, 2, "old replica, after the upgrade").await;
    old_replica_insert(&db, &bed.topic, 1, "old replica, redelivered").await;

    // The new version dead-letters two records of offset 3 and, like an old
    // replica that read it too, offset 2.
    let refused = |key: String| put(&key, T0);
    let message = multi_record(&[
        refused(Alphanumeric.sample_string(&mut rand::rng(), 9000)),
        refused(Alphanumeric.sample_string(&mut rand::rng(), 9000)),
    ]);
    for _ in 0..3 {
        bed.publish_raw(0, Some(b"x"), Some(b"not json")).await;
    }
    bed.publish_raw(0, Some(b"multi"), Some(&message)).await;
    let service = bed.start(&[]);
    bed.wait_committed(4, Duration::from_secs(60)).await;
    service.stop().await.unwrap();

    let dead = rows(&bed).await;
    let keys: Vec<(i64, i32, &str)> = dead
        .iter()
        .map(|d| (d.0, d.1, &d.3[..d.3.len().min(12)]))
        .collect();
    assert_eq!(
        keys,
        vec![
            (0, 0, "invalid JSON"),
            (1, 0, "written befo"),
            (2, 0, "old replica,"),
            (3, 0, "database ref"),
            (3, 1, "database ref"),
        ],
        "one row per record, old replicas' rows included, in dead_letters"
    );
    let left_in_parent: i64 = db
        .query_one("SELECT count(*) FROM ONLY dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left_in_parent, 0, "every row lives under one key");
}
