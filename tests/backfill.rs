//! Backfill and reconcile against versitygw (a real S3 server), real PostgreSQL and, where
//! events take part, the real consumer on real Kafka:
//! - a backfill of thousands of objects with odd keys gives exactly the bucket's state, and
//!   a rerun changes nothing;
//! - the version scheme (docs/backfill.md): a newer event survives an older read, the event
//!   of the very state read changes nothing in either order, the same-second cases, and the
//!   undecidable case settled by reading the object again;
//! - reconcile removes rows of objects gone without events, keeps the others untouched,
//!   changes nothing the second time, and never removes an object created while it listed;
//! - SIGTERM in the middle, then a rerun: the checkpoint is used and the state is exact.

mod common;

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use common::bucket::Bucket;
use common::{minio_message, wait_until, TestBed};
use objmeta::listing::{Kind, Summary};

async fn list(bed: &TestBed, kind: Kind, bucket: &str, extra: &[&str]) -> Summary {
    let command = match kind {
        Kind::Backfill => "backfill",
        Kind::Reconcile => "reconcile",
    };
    let config = bed.listing_config(command, &common::s3().endpoint, bucket, extra);
    common::run_listing(kind, &config).await
}

/// Every row's `updated_at`, in key order: equal before and after when nothing was written.
async fn write_times(bed: &TestBed) -> Value {
    bed.db()
        .await
        .query_one(
            "SELECT to_jsonb(array_agg(updated_at ORDER BY key)) FROM object_metadata",
            &[],
        )
        .await
        .expect("read updated_at")
        .get(0)
}

async fn backfill(bed: &TestBed, bucket: &str, extra: &[&str]) -> Summary {
    list(bed, Kind::Backfill, bucket, extra).await
}

async fn reconcile(bed: &TestBed, bucket: &str, extra: &[&str]) -> Summary {
    list(bed, Kind::Reconcile, bucket, extra).await
}

/// Everything about one row, to tell whether anything was written.
async fn row(bed: &TestBed, bucket: &str, key: &str) -> Option<Value> {
    bed.db()
        .await
        .query_opt(
            "SELECT to_jsonb(o) FROM object_metadata o WHERE bucket = $1 AND key = $2",
            &[&bucket, &key],
        )
        .await
        .expect("read a row")
        .map(|r| r.get(0))
}

/// Keys with what breaks naive code: spaces, `+`, `%`, `/`, UTF-8, `&`, `=`, `?`, `#`.
/// versitygw's posix backend cannot hold both `a` and `a/b`, so no key is a prefix of
/// another followed by `/`.
fn odd_keys(count: usize) -> Vec<String> {
    let shapes = [
        "plain/file-{}.txt",
        "dir one/file {}.txt",
        "a+b/c+{}",
        "100%/{}%2F.bin",
        "ünïcødé/日本語-{}.txt",
        "q?x=1&y=2/{}#frag",
        "deep/ly/nested/path/{}",
    ];
    (0..count)
        .map(|i| shapes[i % shapes.len()].replace("{}", &i.to_string()))
        .collect()
}

/// An event of `key` as MinIO publishes it, with the given sequencer (ns), ETag and size.
fn event(
    bucket: &str,
    key: &str,
    sequencer: i64,
    (etag, size): (&str, i64),
    metadata: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let (message_key, payload) = minio_message(
        "s3:ObjectCreated:Put",
        bucket,
        key,
        u64::try_from(sequencer).expect("positive"),
        None,
        metadata,
    );
    let mut value: Value = serde_json::from_slice(&payload).expect("json");
    value["Records"][0]["s3"]["object"]["eTag"] = etag.into();
    value["Records"][0]["s3"]["object"]["size"] = size.into();
    (message_key, serde_json::to_vec(&value).expect("json"))
}

/// Publishes `messages` and waits until the consumer committed them all.
async fn consume(bed: &TestBed, sent: &mut i64, messages: &[(String, Vec<u8>)]) {
    bed.publish(messages).await;
    *sent += messages.len() as i64;
    bed.wait_committed(*sent, Duration::from_secs(60)).await;
}

fn ns(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos()).expect("fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_gives_the_exact_bucket_state_and_a_rerun_changes_nothing() {
    let bed = TestBed::new("backfill_exact", 1).await;
    let bucket = Bucket::create("exact").await;
    let keys = odd_keys(2100);
    let objects: Vec<(String, Vec<(String, String)>)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let metadata = match i % 3 {
                0 => vec![],
                1 => vec![("id".to_string(), i.to_string())],
                _ => vec![
                    ("id".to_string(), i.to_string()),
                    ("Owner".to_string(), "Zoë".to_string()),
                ],
            };
            (key.clone(), metadata)
        })
        .collect();
    bucket.fill(&objects, 32).await;
    let expected = bucket.truth().await;
    assert_eq!(expected.len(), keys.len(), "the bucket holds every key");

    let first = backfill(&bed, &bucket.name, &["--batch-rows", "300"]).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!(first.tally.listed, keys.len() as u64);
    assert_eq!(first.tally.inserted, keys.len() as u64);
    assert_eq!(
        (
            first.tally.updated,
            first.tally.unchanged,
            first.tally.skipped,
            first.tally.gone,
            first.tally.errors
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(bed.live_rows(&bucket.name).await, expected);
    let spot = row(&bed, &bucket.name, &keys[2]).await.expect("row");
    assert_eq!(spot["event_name"], "objmeta:Backfill");
    assert!(spot["read_at"].is_string(), "{spot}");
    assert_eq!(
        spot["user_metadata"],
        serde_json::json!({"id": "2", "owner": "Zoë"})
    );

    let written = write_times(&bed).await;
    let again = backfill(&bed, &bucket.name, &[]).await;
    assert!(again.succeeded(), "{again:?}");
    assert!(!again.resumed, "a complete backfill leaves no checkpoint");
    assert_eq!(again.tally.unchanged, keys.len() as u64, "{again:?}");
    assert_eq!(
        again.tally.inserted + again.tally.updated + again.tally.skipped,
        0
    );
    let rewritten = write_times(&bed).await;
    assert_eq!(written, rewritten, "the rerun wrote no row");
    assert_eq!(bed.live_rows(&bucket.name).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_events_follow_the_version_scheme() {
    let bed = TestBed::new("backfill_versions", 1).await;
    let objmeta = bed.start(&[]);
    let bucket = Bucket::create("versions").await;
    let mut sent = 0;

    // 1. A newer event survives a backfill of an older state.
    let older = bucket.put("newer-event", b"v1", &[("id", "1")]).await;
    let newer = event(
        &bucket.name,
        "newer-event",
        ns(older.last_modified) + 5_000_000_000,
        ("e-newer", 7),
        &[("X-Amz-Meta-Id", "2")],
    );
    consume(&bed, &mut sent, &[newer]).await;

    // 2. The event of the very state a read saw, before the read...
    let same_first = bucket
        .put("same-event-first", b"same", &[("id", "s")])
        .await;
    let state = event(
        &bucket.name,
        "same-event-first",
        ns(same_first.last_modified) + 400_000_000,
        (&same_first.etag, same_first.size),
        &[("X-Amz-Meta-Id", "s")],
    );
    consume(&bed, &mut sent, &[state]).await;
    // ... and (below) after it.
    let same_after = bucket
        .put("same-event-after", b"same", &[("id", "t")])
        .await;

    // 3. v1 at x.3 s was notified, v2 in the same second was not: the read of v2 wins.
    let v2 = bucket.put("same-second", b"v2", &[("id", "v2")]).await;
    let v1 = event(
        &bucket.name,
        "same-second",
        ns(v2.last_modified) + 300_000_000,
        ("e-v1", 2),
        &[("X-Amz-Meta-Id", "v1")],
    );
    consume(&bed, &mut sent, &[v1]).await;

    // 4. A-B-A within one second, the last write not notified: put A (notified), delete
    //    (notified), put A again (lost). The read of A wins over the delete, and a replay
    //    of both events (the topic read again) must not undo it.
    let aba = bucket.put("aba", b"A", &[("id", "a")]).await;
    let aba_put = event(
        &bucket.name,
        "aba",
        ns(aba.last_modified) + 166_000_000,
        (&aba.etag, aba.size),
        &[("X-Amz-Meta-Id", "a")],
    );
    let aba_delete = minio_message(
        "s3:ObjectRemoved:Delete",
        &bucket.name,
        "aba",
        u64::try_from(ns(aba.last_modified) + 330_000_000).unwrap(),
        None,
        &[],
    );
    consume(&bed, &mut sent, &[aba_put.clone(), aba_delete.clone()]).await;

    let first = backfill(&bed, &bucket.name, &[]).await;
    assert!(first.succeeded(), "{first:?}");
    let rows = bed.live_rows(&bucket.name).await;
    assert_eq!(
        rows["newer-event"].0.as_deref(),
        Some("e-newer"),
        "a newer event survives a read"
    );
    assert_eq!(rows["newer-event"].2, serde_json::json!({"id": "2"}));
    assert_eq!(first.tally.skipped, 1, "{first:?}");
    assert_eq!(
        first.tally.unchanged, 1,
        "the read of the notified state changes nothing: {first:?}"
    );
    let kept = row(&bed, &bucket.name, "same-event-first").await.unwrap();
    assert_eq!(
        kept["event_name"], "s3:ObjectCreated:Put",
        "the event's precise version stays"
    );
    assert_eq!(
        rows["same-second"].0.as_deref(),
        Some(v2.etag.as_str()),
        "the read of v2 wins the same second"
    );
    assert_eq!(first.tally.updated, 1, "{first:?}");
    assert!(
        bed.live_rows(&bucket.name).await.contains_key("aba"),
        "the read of A beats the delete"
    );
    // One at a time: in one batch the put would be merged away before the write.
    consume(&bed, &mut sent, &[aba_put]).await;
    consume(&bed, &mut sent, &[aba_delete]).await;
    assert!(
        bed.live_rows(&bucket.name).await.contains_key("aba"),
        "a replay of the put and the delete does not undo the read"
    );
    assert_eq!(
        first.tally.inserted, 2,
        "same-event-after, and A over the delete: {first:?}"
    );

    // 2 (after): the event of the state the read saw, arriving later, changes no value.
    let before = bed.live_rows(&bucket.name).await["same-event-after"].clone();
    let state = event(
        &bucket.name,
        "same-event-after",
        ns(same_after.last_modified) + 500_000_000,
        (&same_after.etag, same_after.size),
        &[("X-Amz-Meta-Id", "t")],
    );
    consume(&bed, &mut sent, &[state]).await;
    assert_eq!(
        bed.live_rows(&bucket.name).await["same-event-after"],
        before
    );
    // An older event of the same second arriving after the read of v2 loses too.
    let late = event(
        &bucket.name,
        "same-second",
        ns(v2.last_modified) + 100_000_000,
        ("e-v0", 2),
        &[("X-Amz-Meta-Id", "v0")],
    );
    consume(&bed, &mut sent, &[late]).await;
    assert_eq!(
        bed.live_rows(&bucket.name).await["same-second"]
            .0
            .as_deref(),
        Some(v2.etag.as_str())
    );

    // Every later reconcile ends at the same state and writes nothing.
    let settled = bed.live_rows(&bucket.name).await;
    let again = reconcile(&bed, &bucket.name, &[]).await;
    assert!(again.succeeded(), "{again:?}");
    assert_eq!(
        (again.tally.inserted, again.tally.updated, again.removed),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(bed.live_rows(&bucket.name).await, settled);
    objmeta.stop().await.expect("objmeta stops");
}

/// The undecidable case: an event of the object's second that is not older than the read's
/// start. The backfill reads the object again, after the event, and the bucket's state wins.
/// Its window is the rest of one second, so the slow part (the claim's trip through Kafka and
/// objmeta) happens before that second: the claim names a second a few seconds ahead, the object
/// is put at that second's start and read right away. An attempt whose put missed the second
/// (a slow machine) is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_second_tie_the_read_cannot_decide_is_settled_by_reading_again() {
    let bed = TestBed::new("backfill_unsettled", 1).await;
    objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .unwrap();
    let objmeta = bed.start(&[]);
    let bucket = Bucket::create("unsettled").await;
    let mut sent = 0;
    for attempt in 0..5 {
        let key = format!("tie-{attempt}");
        let second = OffsetDateTime::now_utc().unix_timestamp() + 3;
        // Claims a modification at the end of that second, with another ETag.
        let claim = event(
            &bucket.name,
            &key,
            second * 1_000_000_000 + 990_000_000,
            ("e-claimed", 7),
            &[("X-Amz-Meta-Id", "claimed")],
        );
        consume(&bed, &mut sent, &[claim]).await;
        if !wait_for_start_of(second).await {
            println!("attempt {attempt}: the claim took past its second; again");
            continue;
        }
        let put = bucket.put(&key, b"real", &[("id", "real")]).await;
        if put.last_modified.unix_timestamp() != second {
            println!("attempt {attempt}: the put missed the claimed second; again");
            continue;
        }
        let summary = backfill(&bed, &bucket.name, &[]).await;
        assert!(summary.succeeded(), "{summary:?}");
        let seen = bed.live_rows(&bucket.name).await[&key].clone();
        if summary.rereads == 0 {
            println!("attempt {attempt}: the read started after the claimed time; again");
            continue;
        }
        assert_eq!(
            seen.0.as_deref(),
            Some(put.etag.as_str()),
            "the re-read settled it: {summary:?}"
        );
        assert_eq!(seen.2, serde_json::json!({"id": "real"}));
        assert_eq!(summary.tally.unsettled, 0, "{summary:?}");
        objmeta.stop().await.expect("objmeta stops");
        return;
    }
    panic!("no attempt landed inside the second of its object");
}

/// Sleeps until the start of the Unix second `second`; false when it has already passed.
async fn wait_for_start_of(second: i64) -> bool {
    let now = OffsetDateTime::now_utc();
    let wait = i128::from(second) * 1_000_000_000 - now.unix_timestamp_nanos();
    if wait < 0 {
        return false;
    }
    tokio::time::sleep(Duration::from_nanos(u64::try_from(wait).expect("positive"))).await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_what_is_gone_keeps_the_rest_and_what_was_created_meanwhile() {
    let bed = TestBed::new("reconcile", 1).await;
    let bucket = Bucket::create("reconcile").await;
    let keys = odd_keys(1000);
    let objects: Vec<(String, Vec<(String, String)>)> = keys
        .iter()
        .map(|k| (k.clone(), vec![("k".into(), k.clone())]))
        .collect();
    bucket.fill(&objects, 32).await;
    let first = backfill(&bed, &bucket.name, &[]).await;
    assert!(first.succeeded(), "{first:?}");

    // Gone without an event, changed without an event, and created without an event.
    let gone: Vec<&String> = keys.iter().step_by(100).collect();
    for key in &gone {
        bucket.delete(key).await;
    }
    let changed = &keys[1];
    bucket.put(changed, b"changed", &[("k", "changed")]).await;
    bucket.put("fresh/new object", b"new", &[]).await;
    let untouched = row(&bed, &bucket.name, &keys[2]).await.unwrap();

    // A row written while the listing runs, of an object the listing never saw: it must stay.
    let bed_ref = &bed;
    let slow = ["--concurrency", "2"];
    let (drift, ()) = tokio::join!(reconcile(bed_ref, &bucket.name, &slow), async {
        wait_until(
            Duration::from_secs(30),
            "the reconcile to start",
            || async {
                let rows = bed_ref
                    .db()
                    .await
                    .query(
                        "SELECT 1 FROM bucket_listings WHERE kind = 'reconcile'",
                        &[],
                    )
                    .await
                    .ok()?;
                (!rows.is_empty()).then_some(())
            },
        )
        .await;
        let mut client = bed_ref.db().await;
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO object_metadata (bucket, key, etag, event_name, event_time, sequencer, kafka_partition, kafka_offset)
             VALUES ($1, 'created/meanwhile', 'e-meanwhile', 's3:ObjectCreated:Put', now(), objmeta_ns(now()), 0, 0)",
            &[&bucket.name],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // A second run of the same listing, even with --restart, is refused while it runs:
        // it would share the checkpoint and the recorded keys.
        let rival = reconcile(bed_ref, &bucket.name, &["--restart"]).await;
        let reason = rival.stopped.clone().unwrap_or_default();
        assert!(reason.contains("another reconcile"), "{rival:?}");
        assert!(!rival.succeeded() && rival.tally.listed == 0);
    });
    assert!(drift.succeeded(), "{drift:?}");
    assert!(drift.complete);
    assert_eq!(drift.removed, gone.len() as u64, "{drift:?}");
    assert_eq!(drift.tally.updated, 1, "{drift:?}");
    assert_eq!(drift.tally.inserted, 1, "{drift:?}");
    assert_eq!(drift.tally.listed, (keys.len() - gone.len() + 1) as u64);
    let rows = bed.live_rows(&bucket.name).await;
    for key in &gone {
        assert!(!rows.contains_key(*key), "{key} is gone");
    }
    assert!(
        rows.contains_key("created/meanwhile"),
        "a row written during the listing stays"
    );
    assert_eq!(
        rows[changed.as_str()].2,
        serde_json::json!({"k": "changed"})
    );
    assert_eq!(
        row(&bed, &bucket.name, &keys[2]).await.unwrap(),
        untouched,
        "untouched rows keep every value"
    );
    let recorded: (i64, i64, i64) = {
        let r = bed
            .db()
            .await
            .query_one(
                "SELECT missing, stale, removed FROM reconcile_runs WHERE bucket = $1",
                &[&bucket.name],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(recorded, (1, 1, gone.len() as i64));

    // A second reconcile changes nothing (the row written meanwhile is now older than its
    // start and not in the bucket: that one goes, as it should).
    bed.db()
        .await
        .execute(
            "DELETE FROM object_metadata WHERE key = 'created/meanwhile'",
            &[],
        )
        .await
        .unwrap();
    let state = bed.live_rows(&bucket.name).await;
    let second = reconcile(&bed, &bucket.name, &[]).await;
    assert!(second.succeeded(), "{second:?}");
    assert_eq!(
        (second.tally.inserted, second.tally.updated, second.removed),
        (0, 0, 0),
        "{second:?}"
    );
    assert_eq!(second.tally.unchanged, second.tally.listed);
    assert_eq!(bed.live_rows(&bucket.name).await, state);
    assert_eq!(state, bucket.truth().await, "the table mirrors the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_from_its_checkpoint() {
    let bed = TestBed::new("backfill_resume", 1).await;
    let bucket = Bucket::create("resume").await;
    let keys = odd_keys(1500);
    let objects: Vec<(String, Vec<(String, String)>)> = keys
        .iter()
        .map(|k| (k.clone(), vec![("n".into(), k.len().to_string())]))
        .collect();
    bucket.fill(&objects, 32).await;
    let expected = bucket.truth().await;

    let s3 = common::s3();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_objmeta"))
        .args([
            "backfill",
            "--bucket",
            &bucket.name,
            "--concurrency",
            "1",
            "--batch-rows",
            "50",
            "--database-url",
            &bed.services.database_url,
            "--database-schema",
            &bed.schema,
            "--s3-endpoint",
            &s3.endpoint,
            "--s3-access-key",
            &s3.access_key,
            "--s3-secret-key",
            &s3.secret_key,
            "--progress",
            "lines",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start objmeta backfill");
    let position: String = wait_until(Duration::from_secs(60), "a checkpoint", || async {
        bed.db()
            .await
            .query_opt(
                "SELECT position FROM bucket_listings WHERE position IS NOT NULL",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    })
    .await;
    // SIGTERM, as an orchestrator stops a job.
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().expect("backfill exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an interrupted backfill exits non-zero:\n{stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    let partial = bed.live_rows(&bucket.name).await;
    assert!(
        partial.len() < keys.len(),
        "stopped in the middle ({} rows)",
        partial.len()
    );
    for (key, seen) in &partial {
        assert_eq!(
            Some(seen),
            expected.get(key),
            "{key}: nothing written is wrong"
        );
    }
    let stored: String = bed
        .db()
        .await
        .query_one("SELECT position FROM bucket_listings", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored >= position);
    let covered = expected
        .keys()
        .filter(|k| k.as_bytes() <= stored.as_bytes())
        .count();
    assert!(
        partial.len() >= covered,
        "every key up to the checkpoint is written"
    );

    let resumed = backfill(&bed, &bucket.name, &[]).await;
    assert!(resumed.succeeded(), "{resumed:?}");
    assert!(resumed.resumed);
    assert_eq!(resumed.resumed_after.as_deref(), Some(stored.as_str()));
    assert_eq!(
        resumed.tally.listed,
        keys.len() as u64,
        "the tally covers both runs"
    );
    assert_eq!(
        (resumed.tally.inserted, resumed.tally.unchanged),
        (keys.len() as u64, 0),
        "nothing before the checkpoint was read again: {resumed:?}"
    );
    assert_eq!(bed.live_rows(&bucket.name).await, expected);
}
