//! Every supported store through the whole path: real Kafka, real PostgreSQL, the real
//! consumer, and versitygw as the S3 server that enrichment reads.
//! - versitygw publishing its own notifications to Kafka while a real S3 client uploads,
//!   replaces metadata by copying an object onto itself, and deletes, with odd keys and a
//!   restart of versitygw in the middle (its sequencer starts again at 1): the table ends
//!   exactly as the bucket is;
//! - Ceph RGW, RustFS, AWS and EventBridge messages built from their formats, arriving on
//!   different partitions out of order;
//! - MinIO events make no HEAD;
//! - a HEAD refused with 403 keeps the offsets and readiness, and dead-letters nothing.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::bucket::{admin_at, Bucket, PrivateS3};
use common::{fixture, http_get, wait_until, TestBed};

/// The S3 flags of `objmeta run` for the server at `endpoint`, with the tests' keys or a
/// wrong secret key.
fn s3_flags(endpoint: &str, secret_key: Option<&str>) -> Vec<String> {
    common::s3_flags(endpoint, secret_key.unwrap_or(&common::s3().secret_key))
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Waits until the live rows of `bucket` are exactly what the bucket holds.
async fn wait_mirrored(bed: &TestBed, bucket: &Bucket, what: &str) {
    let truth = bucket.truth().await;
    wait_until(Duration::from_secs(90), what, || async {
        let rows = bed.live_rows(&bucket.name).await;
        (rows == truth).then_some(())
    })
    .await;
}

/// Waits until objmeta at `port` is ready (its schema migrated, in its group, reading).
async fn wait_ready(port: u16) {
    wait_until(Duration::from_secs(60), "readiness", || async {
        http_get(port, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versitygw_notifications_end_with_the_table_as_the_bucket_is() {
    let bed = TestBed::new("sources_versitygw", 3).await;
    let brokers = common::services().brokers.clone();
    let mut server = PrivateS3::start_with(
        None,
        &[
            "--event-kafka-url",
            &brokers,
            "--event-kafka-topic",
            &bed.topic,
        ],
    );
    let endpoint = server.endpoint();
    let bucket = Bucket::create_with("vgw", admin_at(&endpoint, None)).await;
    let objmeta = bed.start(&refs(&s3_flags(&endpoint, None)));
    wait_ready(objmeta.http_port).await;

    bucket
        .put(
            "plain.txt",
            b"hello",
            &[("api", "https://api.example.com/v1"), ("id", "1843")],
        )
        .await;
    bucket
        .replace_metadata(
            "plain.txt",
            &[("api", "https://api.example.com/v1"), ("id", "1844")],
        )
        .await;
    for key in ["dir one/a+b 100% ü.txt", "a+b", "x%2Fy", "50%.txt"] {
        bucket.put(key, key.as_bytes(), &[("id", key)]).await;
    }
    bucket.delete("x%2Fy").await;
    wait_mirrored(&bed, &bucket, "the table to mirror the bucket").await;
    let rows = bed.live_rows(&bucket.name).await;
    assert_eq!(
        rows["plain.txt"].2["id"],
        json!("1844"),
        "the copy's metadata"
    );
    assert!(rows.contains_key("a+b"), "a plus stays a plus");

    // Restarted, versitygw counts its sequencer from 1 again: later changes still win.
    server.stop();
    server.resume();
    bucket
        .put("plain.txt", b"hello again", &[("id", "1845")])
        .await;
    bucket.delete("a+b").await;
    bucket
        .put("after restart.txt", b"new", &[("id", "9")])
        .await;
    wait_mirrored(
        &bed,
        &bucket,
        "the table to mirror the bucket after a restart",
    )
    .await;
    assert_eq!(
        bed.live_rows(&bucket.name).await["plain.txt"].2,
        json!({"id": "1845"})
    );

    assert!(bed.dead_letters().await.is_empty(), "nothing dead-lettered");
    let port = objmeta.http_port;
    let tests = TestBed::metric(
        port,
        r#"objmeta_source_events_total{family="test",source="versitygw"}"#,
    )
    .await;
    assert!(
        tests.unwrap_or(0.0) >= 2.0,
        "both start-up test messages counted: {tests:?}"
    );
    let found = TestBed::metric(port, r#"objmeta_enrich_heads_total{result="found"}"#).await;
    assert!(found.unwrap_or(0.0) >= 5.0, "HEADs made: {found:?}");
    objmeta.stop().await.expect("clean stop");
}

/// A fixture of `tests/fixtures/sources/`, its bucket (where it names `aws-bucket`) set to
/// `bucket`.
fn source_message(name: &str, bucket: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(&format!("sources/{name}"))).unwrap();
    text.replace("aws-bucket", bucket).into_bytes()
}

/// One row of object_metadata as JSON, live or not.
async fn row(bed: &TestBed, bucket: &str, key: &str) -> Value {
    bed.db()
        .await
        .query_one(
            "SELECT to_jsonb(o) FROM object_metadata o WHERE bucket = $1 AND key = $2",
            &[&bucket, &key],
        )
        .await
        .unwrap_or_else(|e| panic!("row {bucket}/{key}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ceph_rustfs_aws_and_eventbridge_messages_reach_the_table() {
    let bed = TestBed::new("sources_fixtures", 3).await;
    let aws = Bucket::create("aws").await;
    let photo = aws
        .put(
            "dir/red flower+1.jpg",
            b"jpeg",
            &[("id", "7"), ("api", "aws")],
        )
        .await;
    let s3 = common::s3();
    let objmeta = bed.start(&refs(&s3_flags(&s3.endpoint, None)));

    // Ceph sends no message key (any partition): its copy arrives first, elsewhere.
    let messages = [
        (0, "ceph-copy.json"),
        (1, "ceph-put.json"),
        (2, "ceph-delete.json"),
        (0, "rustfs-put.json"),
        (1, "aws-test-event.json"),
        (2, "aws-put.json"),
        (0, "aws-delete.json"),
        (1, "eventbridge-created.json"),
        (2, "eventbridge-deleted.json"),
    ];
    for (partition, name) in messages {
        let payload = source_message(name, &aws.name);
        bed.publish_raw(partition, None, Some(&payload)).await;
    }
    bed.wait_committed(messages.len() as i64, Duration::from_secs(60))
        .await;
    assert!(bed.dead_letters().await.is_empty(), "nothing dead-lettered");

    let ceph = bed.live_rows("ceph-bucket").await;
    let ceph_keys: Vec<&String> = ceph.keys().collect();
    assert_eq!(
        ceph_keys,
        ["dir one/a+b 100%.txt"],
        "raw key; plain.txt deleted"
    );
    assert_eq!(
        ceph["dir one/a+b 100%.txt"].2,
        json!({"api": "https://api.example.com/v1", "id": "1844"}),
        "the copy is newer by its decoded sequencer, though it arrived first"
    );
    let rustfs = bed.live_rows("rustfs-bucket").await;
    assert_eq!(rustfs["dir/a b+c.txt"].2, json!({"id": "1843"}));

    // AWS sends no metadata: the rows are what HeadObject says.
    let rows = bed.live_rows(&aws.name).await;
    assert_eq!(
        rows["dir/red flower+1.jpg"],
        (Some(photo.etag), Some(photo.size), photo.user_metadata),
        "read from the bucket: {rows:?}"
    );
    assert_eq!(rows.len(), 1, "gone.txt does not exist: {rows:?}");
    let enriched = row(&bed, &aws.name, "dir/red flower+1.jpg").await;
    assert_eq!(enriched["event_name"], json!("objmeta:Enrich"));
    assert!(enriched["read_at"].is_string(), "{enriched}");
    let gone = row(&bed, &aws.name, "gone.txt").await;
    assert!(
        !gone["deleted_at"].is_null(),
        "a HEAD's 404 is a tombstone: {gone}"
    );

    let port = objmeta.http_port;
    for (source, family, at_least) in [
        ("ceph", "created", 2.0),
        ("ceph", "removed", 1.0),
        ("rustfs", "created", 1.0),
        ("aws", "created", 2.0),
        ("aws", "removed", 2.0),
        ("aws", "test", 1.0),
    ] {
        let series =
            format!(r#"objmeta_source_events_total{{family="{family}",source="{source}"}}"#);
        let value = TestBed::metric(port, &series).await.unwrap_or(0.0);
        assert!(value >= at_least, "{series} = {value}");
    }
    let gone = TestBed::metric(port, r#"objmeta_enrich_heads_total{result="gone"}"#).await;
    assert!(gone.unwrap_or(0.0) >= 1.0, "{gone:?}");
    objmeta.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minio_events_make_no_head() {
    let bed = TestBed::new("sources_minio", 1).await;
    let s3 = common::s3();
    let objmeta = bed.start(&refs(&s3_flags(&s3.endpoint, None)));
    let names = [
        "put_with_metadata.json",
        "copy_new_metadata.json",
        "delete.json",
    ];
    for name in names {
        bed.publish_raw(0, None, Some(&fixture(name))).await;
    }
    bed.wait_committed(names.len() as i64, Duration::from_secs(60))
        .await;
    let heads = TestBed::metric_sum(objmeta.http_port, "objmeta_enrich_heads_total").await;
    assert_eq!(heads, Some(0.0), "MinIO's events are the state");
    let minio = TestBed::metric(
        objmeta.http_port,
        r#"objmeta_source_events_total{family="created",source="minio"}"#,
    )
    .await;
    assert_eq!(minio, Some(2.0));
    objmeta.stop().await.expect("clean stop");
}

/// A versitygw record of a put of `key` in `bucket`, as versitygw writes it.
fn versitygw_put(bucket: &str, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"Records": [{
        "eventVersion": "2.2", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-15T10:00:00Z", "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"PrincipalId": "admin"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "webhook-global",
               "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::/{bucket}/{key}")},
               "object": {"key": key, "size": 5, "eTag": "\"x\"", "versionId": null,
                          "sequencer": "1"}}
    }]}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_head_keeps_the_offsets_and_dead_letters_nothing() {
    let bed = TestBed::new("sources_refused", 1).await;
    let bucket = Bucket::create("refused").await;
    let head = bucket.put("k", b"hello", &[("id", "1")]).await;
    bed.publish_raw(0, None, Some(&versitygw_put(&bucket.name, "k")))
        .await;
    let s3 = common::s3();

    let mut flags = s3_flags(&s3.endpoint, Some("not-the-secret"));
    flags.extend(["--shutdown-timeout".to_string(), "2s".to_string()]);
    let refused = bed.start(&refs(&flags));
    let port = refused.http_port;
    let reason = wait_until(Duration::from_secs(60), "readiness to fail", || async {
        http_get(port, "/readyz")
            .await
            .filter(|(status, body)| *status == 503 && body.contains("HeadObject"))
    })
    .await;
    assert!(reason.1.contains("HeadObject"), "{reason:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.committed_offsets(), vec![-1], "no offset committed");
    assert!(bed.dead_letters().await.is_empty(), "nothing dead-lettered");
    assert!(bed.live_rows(&bucket.name).await.is_empty());
    let refusals = TestBed::metric_sum(port, "objmeta_enrich_heads_total").await;
    assert!(refusals.unwrap_or(0.0) >= 2.0, "retried: {refusals:?}");
    // Shutdown gives up on the batch it cannot read: its offset stays uncommitted.
    let stopped = refused.stop().await;
    assert!(
        matches!(
            stopped,
            Err(objmeta::error::Error::Abandoned { messages: 1 })
        ),
        "{stopped:?}"
    );

    let fixed = bed.start(&refs(&s3_flags(&s3.endpoint, None)));
    bed.wait_committed(1, Duration::from_secs(60)).await;
    let rows = bed.live_rows(&bucket.name).await;
    assert_eq!(
        rows["k"],
        (Some(head.etag), Some(head.size), head.user_metadata)
    );
    wait_ready(fixed.http_port).await;
    fixed.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_that_need_a_head_without_an_s3_endpoint_stop_objmeta_clearly() {
    let bed = TestBed::new("sources_no_s3", 1).await;
    bed.publish_raw(0, None, Some(&versitygw_put("b", "k")))
        .await;
    // The binary, without the S3 server scripts/test exports to the tests.
    let mut objmeta = bed.spawn_binary_env(&[], &[("S3_ENDPOINT", "")]);
    wait_until(Duration::from_secs(60), "objmeta to stop by itself", || {
        let running = objmeta.running();
        async move { (!running).then_some(()) }
    })
    .await;
    let log = objmeta.log();
    assert!(
        log.contains("S3_ENDPOINT") && log.contains("--enrich never"),
        "{log}"
    );
    assert_eq!(bed.committed_offsets(), vec![-1], "nothing committed");
    assert!(bed.dead_letters().await.is_empty(), "nothing dead-lettered");
}
