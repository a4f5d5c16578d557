//! A rolling upgrade from schema version 4 to 5 with real binaries: a replica of the previous
//! version (built by `scripts/previous-objmeta`) consumes alone, then a replica of this
//! version joins its group (migrating the database in place while the old one writes), then
//! the old one leaves. `object_metadata` is right in every phase, the new tables are filled
//! from the rows that were there and from every write of the old replica (the trigger of
//! sql/0005), and an older event the new replica reads after the old one wrote a newer state
//! loses to it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{differences, minio_message, oracle, repo_root, Binary, TestBed};

const T0: u64 = 1_764_000_000_000_000_000;
const OBJECTS: u64 = 120;
/// Objects of a versioned bucket among them.
const VERSIONED: u64 = 24;

/// The previous version's binary: `OBJMETA_PREVIOUS_BIN`, or built by the script.
fn previous_binary() -> PathBuf {
    if let Ok(path) = std::env::var("OBJMETA_PREVIOUS_BIN") {
        return PathBuf::from(path);
    }
    let output = Command::new(repo_root().join("scripts/previous-objmeta"))
        .output()
        .expect("run scripts/previous-objmeta");
    assert!(
        output.status.success(),
        "scripts/previous-objmeta failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn put(i: u64, at: u64, id: &str) -> (String, Vec<u8>) {
    let key = format!("obj-{i:03}");
    minio_message(
        "s3:ObjectCreated:Put",
        "up",
        &key,
        T0 + at,
        None,
        &[("X-Amz-Meta-Id", id)],
    )
}

/// A change of versioned object `i` (its own keys): a put of `version`, or its permanent delete.
fn versioned(i: u64, at: u64, version: &str, put: bool) -> (String, Vec<u8>) {
    let key = format!("ver-{i:03}");
    let name = match put {
        true => "s3:ObjectCreated:Put",
        false => "s3:ObjectRemoved:Delete",
    };
    let metadata: &[(&str, &str)] = match put {
        true => &[("X-Amz-Meta-Id", version)],
        false => &[],
    };
    minio_message(name, "up", &key, T0 + at, Some(version), metadata)
}

fn delete(i: u64, at: u64) -> (String, Vec<u8>) {
    let key = format!("obj-{i:03}");
    minio_message("s3:ObjectRemoved:Delete", "up", &key, T0 + at, None, &[])
}

async fn check(bed: &TestBed, sent: &[(String, Vec<u8>)], phase: &str) {
    let expected = oracle(sent.iter().map(|(_, p)| p.as_slice()));
    let diff = differences(&expected, &bed.table().await);
    assert!(diff.is_empty(), "{phase}: {:?}", &diff[..diff.len().min(5)]);
}

async fn count(bed: &TestBed, sql: &str) -> i64 {
    bed.db()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

async fn stop(mut replica: Binary, name: &str) {
    let status = replica.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{name}: {status:?}\n{}", replica.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_and_a_new_replica_side_by_side_keep_the_rows_right() {
    let previous = previous_binary();
    let bed = TestBed::new("upgrade", 4).await;
    let mut sent = Vec::new();

    // 1. The previous version alone (schema 4).
    let old = bed.spawn_program(&previous, &[], &[]);
    let mut first: Vec<_> = (0..OBJECTS).map(|i| put(i, i, "1")).collect();
    first.extend((0..VERSIONED).map(|i| versioned(i, i, "v1", true)));
    bed.publish(&first).await;
    sent.extend(first);
    bed.wait_committed(sent.len() as i64, Duration::from_secs(120))
        .await;
    check(&bed, &sent, "old alone").await;

    // 2. This version joins: it migrates the schema in place while the old one runs.
    let new = bed.spawn_binary(&[]);
    common::wait_until(Duration::from_secs(60), "schema 5", || async {
        let tables = count(
            &bed,
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'object_versions'",
        )
        .await;
        (tables == 1).then_some(())
    })
    .await;
    assert_eq!(
        count(&bed, "SELECT count(*) FROM object_versions").await,
        (OBJECTS + VERSIONED) as i64,
        "the versions are filled from the current rows"
    );
    // Overwrites, deletes and new objects, while both replicas own partitions.
    for replica in [&old, &new] {
        common::wait_until(Duration::from_secs(60), "partitions on both", || async {
            let owned = TestBed::metric(replica.http_port, "objmeta_assigned_partitions").await?;
            (owned >= 1.0).then_some(())
        })
        .await;
    }
    let written = |port| async move {
        TestBed::metric_sum(port, "objmeta_rows_written_total")
            .await
            .unwrap_or(0.0)
    };
    let old_before = written(old.http_port).await;
    let new_before = written(new.http_port).await;
    let mut second: Vec<_> = (0..OBJECTS).map(|i| put(i, 1_000 + i, "2")).collect();
    second.extend((0..OBJECTS).step_by(4).map(|i| delete(i, 2_000 + i)));
    second.extend((OBJECTS..OBJECTS + 40).map(|i| put(i, 1_000 + i, "2")));
    // A new current version deleted for good: whichever replica handles it, the previous
    // version is current again (an old replica tombstones the row; the mirror derives it).
    second.extend((0..VERSIONED).map(|i| versioned(i, 1_000 + i, "v2", true)));
    second.extend((0..VERSIONED).map(|i| versioned(i, 2_000 + i, "v2", false)));
    bed.publish(&second).await;
    sent.extend(second);
    bed.wait_committed(sent.len() as i64, Duration::from_secs(120))
        .await;
    check(&bed, &sent, "old and new side by side").await;
    assert!(
        written(old.http_port).await > old_before,
        "the old replica wrote"
    );
    assert!(
        written(new.http_port).await > new_before,
        "the new replica wrote"
    );

    // 3. The old replica leaves; the new one owns every partition. Older events of objects
    // the old replica wrote newer states of (a replay) lose to those states; new changes win.
    stop(old, "the previous version").await;
    let mut third: Vec<_> = (0..OBJECTS)
        .step_by(3)
        .map(|i| put(i, i, "stale"))
        .collect();
    third.extend((1..OBJECTS).step_by(4).map(|i| put(i, 3_000 + i, "3")));
    bed.publish(&third).await;
    sent.extend(third);
    bed.wait_committed(sent.len() as i64, Duration::from_secs(120))
        .await;
    check(&bed, &sent, "new alone").await;
    stop(new, "this version").await;

    // Every object's current state is a version, and its history holds that change.
    let unmatched = count(
        &bed,
        "SELECT count(*) FROM object_metadata m
         WHERE m.sequencer IS NOT NULL AND NOT EXISTS (
             SELECT 1 FROM object_versions v
             WHERE v.bucket = m.bucket AND v.key = m.key
               AND v.version_id = coalesce(m.version_id, 'null')
               AND v.sequencer = m.sequencer AND v.etag IS NOT DISTINCT FROM m.etag)
            OR NOT EXISTS (
             SELECT 1 FROM object_history h
             WHERE h.bucket = m.bucket AND h.key = m.key AND h.sequencer = m.sequencer)",
    )
    .await;
    assert_eq!(unmatched, 0, "rows without their version or history");
    assert!(bed.dead_letters().await.is_empty());
}
