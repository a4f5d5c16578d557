//! The core path on the real broker and database: events in, exact rows
//! out, whatever the delivery order; bad messages dead-lettered.

mod common;

use std::time::Duration;

use common::{differences, minio_message, oracle, TestBed};
use serde_json::json;

const T0: u64 = 1_764_000_000_000_000_000; // 2025-11-24, in ns

/// A history touching every kind of change, with MinIO's message keys.
fn history() -> Vec<(String, Vec<u8>)> {
    let meta_v1 = [
        ("X-Amz-Meta-Api", "https://api.example.com/v1"),
        ("X-Amz-Meta-Id", "1843"),
    ];
    let meta_v2 = [
        ("X-Amz-Meta-Api", "https://api.example.com/v1"),
        ("X-Amz-Meta-Id", "1844"),
    ];
    vec![
        // the guide's metadata update: Put, then Copy onto itself with new metadata
        minio_message(
            "s3:ObjectCreated:Put",
            "test-bucket",
            "test-file_apiid.txt",
            T0 + 1_000,
            None,
            &meta_v1,
        ),
        minio_message(
            "s3:ObjectCreated:Copy",
            "test-bucket",
            "test-file_apiid.txt",
            T0 + 2_000,
            None,
            &meta_v2,
        ),
        // tagging keeps the sequencer of the write it follows
        minio_message(
            "s3:ObjectCreated:PutTagging",
            "test-bucket",
            "test-file_apiid.txt",
            T0 + 2_000,
            None,
            &meta_v2,
        ),
        // created then removed
        minio_message(
            "s3:ObjectCreated:Put",
            "test-bucket",
            "gone.txt",
            T0 + 1_000,
            None,
            &meta_v1,
        ),
        minio_message(
            "s3:ObjectRemoved:Delete",
            "test-bucket",
            "gone.txt",
            T0 + 5_000,
            None,
            &[],
        ),
        // multipart upload, a key that needs escaping
        minio_message(
            "s3:ObjectCreated:CompleteMultipartUpload",
            "media",
            "dir one/a+b 100% ü.bin",
            T0 + 3_000,
            None,
            &[("X-Amz-Meta-Owner", "ana")],
        ),
        // versioned bucket: v2 is current, deleting old v1 must not remove the row
        minio_message(
            "s3:ObjectCreated:Put",
            "versioned",
            "doc.txt",
            T0 + 1_000,
            Some("v1"),
            &[("X-Amz-Meta-Rev", "1")],
        ),
        minio_message(
            "s3:ObjectCreated:Put",
            "versioned",
            "doc.txt",
            T0 + 4_000,
            Some("v2"),
            &[("X-Amz-Meta-Rev", "2")],
        ),
        minio_message(
            "s3:ObjectRemoved:Delete",
            "versioned",
            "doc.txt",
            T0 + 1_000,
            Some("v1"),
            &[],
        ),
        // a delete marker always removes
        minio_message(
            "s3:ObjectCreated:Put",
            "versioned",
            "marked.txt",
            T0 + 1_000,
            Some("m1"),
            &[],
        ),
        minio_message(
            "s3:ObjectRemoved:DeleteMarkerCreated",
            "versioned",
            "marked.txt",
            T0 + 6_000,
            Some("dm"),
            &[],
        ),
        // read-only events change nothing
        minio_message(
            "s3:ObjectAccessed:Get",
            "test-bucket",
            "never-written.txt",
            T0 + 9_000,
            None,
            &[],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gives_exact_rows_in_any_delivery_order() {
    let messages = history();
    let in_order = TestBed::new("in_order", 3).await;
    let shuffled = TestBed::new("shuffled", 3).await;
    // Reversed, and every message delivered twice: duplicates and replays.
    let mut hostile: Vec<_> = messages.iter().rev().cloned().collect();
    hostile.extend(messages.iter().cloned());
    in_order.publish(&messages).await;
    shuffled.publish(&hostile).await;

    let first = in_order.start(&[]);
    let second = shuffled.start(&["--batch-max-rows", "2"]);
    in_order
        .wait_committed(messages.len() as i64, Duration::from_secs(60))
        .await;
    shuffled
        .wait_committed(hostile.len() as i64, Duration::from_secs(60))
        .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let ordered_table = in_order.table().await;
    assert_eq!(differences(&expected, &ordered_table), Vec::<String>::new());
    assert_eq!(
        differences(&expected, &shuffled.table().await),
        Vec::<String>::new()
    );

    // Spelled out, so a bug shared by the oracle and the service still shows.
    let db = in_order.db().await;
    let live: Vec<(String, String, serde_json::Value)> = db
        .query(
            "SELECT bucket, key, user_metadata FROM current_objects ORDER BY bucket, key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        live,
        vec![
            (
                "media".into(),
                "dir one/a+b 100% ü.bin".into(),
                json!({"owner": "ana"})
            ),
            (
                "test-bucket".into(),
                "test-file_apiid.txt".into(),
                json!({"api": "https://api.example.com/v1", "id": "1844"})
            ),
            ("versioned".into(), "doc.txt".into(), json!({"rev": "2"})),
        ]
    );
    let found: Vec<String> = db
        .query(
            r#"SELECT key FROM current_objects WHERE user_metadata @> '{"id":"1844"}'"#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found, vec!["test-file_apiid.txt".to_string()]);
    let tombstones: i64 = db
        .query_one(
            "SELECT count(*) FROM object_metadata WHERE deleted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tombstones, 2, "gone.txt and marked.txt are tombstones");
    let tagged: String = db
        .query_one(
            "SELECT event_name FROM object_metadata WHERE key = 'test-file_apiid.txt'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tagged, "s3:ObjectCreated:PutTagging",
        "equal sequencer: later arrival wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_neighbours_written() {
    let bed = TestBed::new("poison", 1).await;
    let (good_key, good) = minio_message("s3:ObjectCreated:Put", "b", "before.txt", T0, None, &[]);
    let (after_key, after) = minio_message("s3:ObjectCreated:Put", "b", "after.txt", T0, None, &[]);
    let (_, valid) = minio_message("s3:ObjectCreated:Put", "b", "bad-seq.txt", T0, None, &[]);
    let bad_sequencer = String::from_utf8(valid)
        .unwrap()
        .replace(&format!("\"{T0:X}\""), "\"not-hex\"");
    let poison: Vec<(&str, Option<&[u8]>)> = vec![
        ("not json", Some(b"this is not json".as_slice())),
        ("another shape", Some(br#"{"hello": "world"}"#.as_slice())),
        ("empty value", Some(b"".as_slice())),
        (
            "missing records",
            Some(br#"{"EventName":"s3:ObjectCreated:Put","Key":"b/x"}"#.as_slice()),
        ),
        ("bad sequencer", Some(bad_sequencer.as_bytes())),
        ("null value", None),
    ];
    bed.publish_raw(0, Some(good_key.as_bytes()), Some(&good))
        .await;
    for (label, payload) in &poison {
        bed.publish_raw(0, Some(label.as_bytes()), *payload).await;
    }
    bed.publish_raw(0, Some(after_key.as_bytes()), Some(&after))
        .await;

    let service = bed.start(&[]);
    let total = poison.len() as i64 + 2;
    bed.wait_committed(total, Duration::from_secs(60)).await;
    service.stop().await.unwrap();

    let dead = bed.dead_letters().await;
    assert_eq!(dead.len(), poison.len(), "{dead:?}");
    for ((offset, key, payload, reason), (index, (label, sent))) in
        dead.iter().zip(poison.iter().enumerate())
    {
        assert_eq!(*offset, index as i64 + 1);
        assert_eq!(key.as_deref(), Some(label.as_bytes()));
        // Kafka may hand an empty value over as null: compare the bytes.
        assert_eq!(
            payload.as_deref().unwrap_or_default(),
            sent.unwrap_or_default(),
            "raw payload kept for {label}"
        );
        assert!(!reason.is_empty(), "reason given for {label}");
    }
    let keys: Vec<String> = bed
        .db()
        .await
        .query("SELECT key FROM current_objects ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        vec!["after.txt".to_string(), "before.txt".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_fixtures_give_expected_rows() {
    let bed = TestBed::new("fixtures", 3).await;
    // The Copy arrives before the Put it follows: the newer metadata must stay.
    let first_wave: Vec<(String, Vec<u8>)> = [
        "copy_new_metadata.json",
        "put_with_metadata.json",
        "multipart.json",
        "escaped_key.json",
        "delete_marker.json",
        "get.json",
        "minio-docs-kafka-put.json",
    ]
    .iter()
    .map(|name| {
        let payload = common::fixture(name);
        (common::message_key(&payload), payload)
    })
    .collect();
    bed.publish(&first_wave).await;
    let service = bed.start(&[]);
    bed.wait_committed(first_wave.len() as i64, Duration::from_secs(60))
        .await;

    let db = bed.db().await;
    let rows = live_rows(&db).await;
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        names,
        vec![
            ("images", "myphoto.jpg"),
            ("media", "videos/2026/launch-keynote.mp4"),
            ("test-bucket", "dir one/a+b 100% ü.txt"),
            ("test-bucket", "test-file_apiid.txt"),
        ]
    );
    assert_eq!(rows[0].3, json!({"content-type": "image/jpeg"}));
    assert_eq!(
        rows[1].2,
        json!({"duration-seconds": "2712", "uploaded-by": "video-pipeline"})
    );
    assert_eq!(rows[1].5, "s3:ObjectCreated:CompleteMultipartUpload");
    assert_eq!(
        rows[3].2,
        json!({"api": "https://api.example.com/v1", "id": "1844"})
    );
    assert_eq!(rows[3].5, "s3:ObjectCreated:Copy");
    let marker: (Option<String>, bool) = db
        .query_one(
            "SELECT version_id, deleted_at IS NOT NULL FROM object_metadata \
             WHERE bucket = 'versioned-bucket' AND key = 'reports/2026/q1.pdf'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        marker,
        (Some("c8e1f2a4-7b3d-4f6e-9a1c-2d5e8f0b3a71".into()), true)
    );

    // Then the object is deleted: it leaves current_objects, stays as a tombstone.
    let delete = common::fixture("delete.json");
    bed.publish(&[(common::message_key(&delete), delete)]).await;
    bed.wait_committed(first_wave.len() as i64 + 1, Duration::from_secs(60))
        .await;
    service.stop().await.unwrap();
    let rows = live_rows(&db).await;
    assert!(
        rows.iter().all(|r| r.1 != "test-file_apiid.txt"),
        "{rows:?}"
    );
    assert_eq!(rows.len(), 3);
    let tombstone: (Option<i64>, serde_json::Value, String) = db
        .query_one(
            "SELECT size, user_metadata, event_name FROM object_metadata WHERE key = 'test-file_apiid.txt'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        tombstone,
        (None, json!({}), "s3:ObjectRemoved:Delete".to_string())
    );
}

type LiveRow = (
    String,
    String,
    serde_json::Value,
    serde_json::Value,
    Option<i64>,
    String,
);

async fn live_rows(db: &tokio_postgres::Client) -> Vec<LiveRow> {
    db.query(
        "SELECT bucket, key, user_metadata, system_metadata, size, event_name \
         FROM current_objects ORDER BY bucket, key",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}
