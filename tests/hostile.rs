//! Hostile input: every message ends as a dead letter with a clear reason
//! or as a correct row, and the messages after it are still processed. A
//! value the parser lets through but PostgreSQL refuses is isolated so that
//! only its row is dead-lettered.

mod common;

use std::time::Duration;

use common::{minio_message, TestBed};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};

const T0: u64 = 1_764_000_000_000_000_000; // 2025-11-24, in ns

/// What must become of one message.
enum Outcome {
    /// A dead letter whose reason contains this text.
    Dead(&'static str),
    /// The row `(bucket, key)` with this `user_metadata`.
    Row(String, String, Value),
    /// Counted and skipped: neither a row nor a dead letter.
    Skipped(String, String),
}

struct Case {
    label: &'static str,
    payload: Option<Vec<u8>>,
    outcome: Outcome,
}

fn put(bucket: &str, key: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
    minio_message("s3:ObjectCreated:Put", bucket, key, T0, None, metadata).1
}

/// A valid Put, with its JSON changed by `edit`.
fn edited(key: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&put("h", key, &[])).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn object(value: &mut Value) -> &mut Value {
    &mut value["Records"][0]["s3"]["object"]
}

fn dead(label: &'static str, payload: Vec<u8>, reason: &'static str) -> Case {
    Case {
        label,
        payload: Some(payload),
        outcome: Outcome::Dead(reason),
    }
}

fn row(label: &'static str, payload: Vec<u8>, bucket: &str, key: &str, meta: Value) -> Case {
    Case {
        label,
        payload: Some(payload),
        outcome: Outcome::Row(bucket.into(), key.into(), meta),
    }
}

fn cases() -> Vec<Case> {
    let long_key = "k".repeat(1000) + &"é".repeat(12); // 1024 bytes
    let many: Vec<(String, String)> = (0..400)
        .map(|i| {
            (
                format!("X-Amz-Meta-Field-{i:03}"),
                format!("value {i} ").repeat(8),
            )
        })
        .chain([("X-Amz-Meta-Big".to_string(), "b".repeat(100 * 1024))])
        .collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let many_json: Value = many
        .iter()
        .map(|(k, v)| (k[11..].to_lowercase(), Value::String(v.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let injection_bucket = "b'; DROP TABLE object_metadata; --";
    let injection_key = "x'); DELETE FROM dead_letters WHERE ('1'='1";
    let injection_meta = [
        ("X-Amz-Meta-Q", "'||(SELECT current_user)||'"),
        (
            "X-Amz-Meta-\"); DROP SCHEMA public; --",
            "$1 $$ \\x00 ::jsonb",
        ),
    ];
    // Exactly repeated JSON keys and keys differing only in case: written by
    // hand, a JSON map would merge them.
    let case_dupes = String::from_utf8(put("h", "case.txt", &[("X-Amz-Meta-Id", "upper")]))
        .unwrap()
        .replace(
            r#""X-Amz-Meta-Id":"upper""#,
            r#""X-Amz-Meta-Id":"upper","x-amz-meta-id":"lower","X-Amz-Meta-Dup":"1","X-Amz-Meta-Dup":"2""#,
        );
    assert!(case_dupes.contains("lower"), "the edit applied");
    vec![
        dead("not json", b"this is { not json".to_vec(), "invalid JSON"),
        dead(
            "invalid utf-8",
            b"{\"EventName\":\"s3:ObjectCreated:Put\",\"Key\":\"h/\xff\xfe\"}".to_vec(),
            "not UTF-8",
        ),
        dead("json array", b"[1, 2, 3]".to_vec(), "not an S3 event"),
        dead("json number", b"42".to_vec(), "not an S3 event"),
        dead("json string", b"\"Records\"".to_vec(), "not an S3 event"),
        dead("empty value", Vec::new(), "empty message"),
        Case {
            label: "null value",
            payload: None,
            outcome: Outcome::Dead("empty message"),
        },
        dead(
            "missing records",
            br#"{"EventName":"s3:ObjectCreated:Put","Key":"h/x"}"#.to_vec(),
            "no \"Records\"",
        ),
        dead(
            "empty records",
            br#"{"EventName":"s3:ObjectCreated:Put","Key":"h/x","Records":[]}"#.to_vec(),
            "empty array",
        ),
        dead(
            "no bucket",
            edited("nb.txt", |v| {
                v["Records"][0]["s3"]["bucket"]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            }),
            "s3.bucket.name",
        ),
        dead(
            "no key",
            edited("nk.txt", |v| {
                object(v).as_object_mut().unwrap().remove("key");
            }),
            "s3.object.key",
        ),
        dead(
            "size as words",
            edited("size.txt", |v| object(v)["size"] = json!("ten")),
            "invalid value: string \"ten\"",
        ),
        dead(
            "metadata number",
            edited("mnum.txt", |v| {
                object(v)["userMetadata"]["X-Amz-Meta-N"] = json!(42)
            }),
            "must be a string",
        ),
        dead(
            "metadata object",
            edited("mobj.txt", |v| {
                object(v)["userMetadata"]["X-Amz-Meta-O"] = json!({"a": "b"})
            }),
            "must be a string",
        ),
        dead(
            "sequencer not hex",
            edited("seq.txt", |v| object(v)["sequencer"] = json!("12G4")),
            "not hexadecimal",
        ),
        dead(
            "sequencer too large",
            edited("seq2.txt", |v| {
                object(v)["sequencer"] = json!("FFFFFFFFFFFFFFFFFF")
            }),
            "greater than i64::MAX",
        ),
        dead(
            "bad escape",
            edited("esc.txt", |v| object(v)["key"] = json!("a%zzb")),
            "invalid escape",
        ),
        dead(
            "nul in key",
            edited("nul.txt", |v| object(v)["key"] = json!("a%00b")),
            "NUL",
        ),
        dead(
            "raw nul in key",
            edited("nul2.txt", |v| object(v)["key"] = json!("a\u{0}b")),
            "NUL",
        ),
        dead(
            "nul in metadata value",
            edited("nulm.txt", |v| {
                object(v)["userMetadata"]["X-Amz-Meta-X"] = json!("a\u{0}b")
            }),
            "NUL",
        ),
        dead(
            "nul in metadata key",
            edited("nulk.txt", |v| {
                object(v)["userMetadata"]["X-Amz-Meta-\u{0}"] = json!("v")
            }),
            "NUL",
        ),
        dead(
            "an unknown store",
            edited("name.txt", |v| {
                v["Records"][0]["eventSource"] = json!("garage:s3")
            }),
            "not the eventSource of a supported store",
        ),
        row(
            "1024-byte key",
            put("h", &long_key, &[("X-Amz-Meta-A", "1")]),
            "h",
            &long_key,
            json!({"a": "1"}),
        ),
        row(
            "huge metadata",
            put("h", "huge.txt", &many_refs),
            "h",
            "huge.txt",
            many_json,
        ),
        row(
            "sql injection",
            put(injection_bucket, injection_key, &injection_meta),
            injection_bucket,
            injection_key,
            json!({"q": "'||(SELECT current_user)||'", "\"); drop schema public; --": "$1 $$ \\x00 ::jsonb"}),
        ),
        row(
            "metadata keys differing in case",
            case_dupes.into_bytes(),
            "h",
            "case.txt",
            // The original key sorting greatest wins: "x-amz-meta-id" > "X-Amz-Meta-Id".
            json!({"id": "lower", "dup": "2"}),
        ),
        row(
            "envelope key disagrees",
            edited("record-wins.txt", |v| {
                v["Key"] = json!("other/envelope.txt")
            }),
            "h",
            "record-wins.txt",
            json!({}),
        ),
        row(
            "unknown created operation",
            edited("newop.txt", |v| {
                v["Records"][0]["eventName"] = json!("s3:ObjectCreated:FutureThing");
                v["EventName"] = json!("s3:ObjectCreated:FutureThing");
            }),
            "h",
            "newop.txt",
            json!({}),
        ),
        Case {
            label: "unknown event family",
            payload: Some(edited("unknown.txt", |v| {
                v["Records"][0]["eventName"] = json!("s3:Teleport:Done");
                v["EventName"] = json!("s3:Teleport:Done");
            })),
            outcome: Outcome::Skipped("h".into(), "unknown.txt".into()),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_end_as_dead_letters_or_correct_rows() {
    // 2 MiB messages allowed on this topic (the broker's default is ~1 MB).
    let max_message = 2 * 1024 * 1024;
    let bed = TestBed::on(
        common::services().clone(),
        "hostile",
        1,
        &[("max.message.bytes", &max_message.to_string())],
    )
    .await;
    let mut cases = cases();
    // A 1 MiB message: ten 100 KiB metadata values plus the envelope.
    let big_values: Vec<(String, String)> = (0..10)
        .map(|i| {
            (
                format!("X-Amz-Meta-Part-{i}"),
                format!("{i}").repeat(104_800),
            )
        })
        .collect();
    let big_refs: Vec<(&str, &str)> = big_values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let big = put("h", "one-mebibyte.txt", &big_refs);
    assert!(
        (1024 * 1024..1024 * 1024 + 8192).contains(&big.len()),
        "{}",
        big.len()
    );
    let big_meta: Value = big_values
        .iter()
        .map(|(k, v)| (k[11..].to_lowercase(), Value::String(v.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // A key the parser accepts but PostgreSQL cannot index (a btree entry
    // holds at most ~2700 bytes; random text does not compress below that).
    let unindexable = Alphanumeric.sample_string(&mut rand::rng(), 9000);
    let (neighbour_key, neighbour) =
        minio_message("s3:ObjectCreated:Put", "h", "neighbour.txt", T0, None, &[]);
    let (last_key, last) = minio_message("s3:ObjectCreated:Put", "h", "last.txt", T0, None, &[]);

    for case in &cases {
        bed.publish_raw(0, Some(case.label.as_bytes()), case.payload.as_deref())
            .await;
    }
    bed.publish_large(0, b"one mebibyte", &big, max_message)
        .await;
    cases.push(Case {
        label: "one mebibyte",
        payload: Some(big),
        outcome: Outcome::Row("h".into(), "one-mebibyte.txt".into(), big_meta),
    });
    let refused_offset = cases.len() as i64;
    bed.publish_raw(
        0,
        Some(b"unindexable key"),
        Some(&put("h", &unindexable, &[])),
    )
    .await;
    bed.publish_raw(0, Some(neighbour_key.as_bytes()), Some(&neighbour))
        .await;
    bed.publish_raw(0, Some(last_key.as_bytes()), Some(&last))
        .await;
    let total = cases.len() as i64 + 3;

    // One long batch age: the refused row shares its batch with the others.
    let service = bed.start(&["--batch-max-age", "3s"]);
    bed.wait_committed(total, Duration::from_secs(90)).await;
    let rejected = r#"objmeta_rows_written_total{result="rejected"}"#;
    let rejected = TestBed::metric(service.http_port, rejected).await;
    let batches = TestBed::metric(service.http_port, "objmeta_batch_rows_count").await;
    service.stop().await.unwrap();

    let db = bed.db().await;
    let dead = bed.dead_letters().await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (offset, case) in cases.iter().enumerate() {
        let offset = offset as i64;
        let letter = dead.iter().find(|d| d.0 == offset);
        match &case.outcome {
            Outcome::Dead(reason) => match letter {
                Some((_, key, payload, got)) => {
                    if !got.contains(reason) {
                        failures.push(format!("{}: reason {got:?} lacks {reason:?}", case.label));
                    }
                    if key.as_deref() != Some(case.label.as_bytes()) {
                        failures.push(format!("{}: message key not kept", case.label));
                    }
                    let sent = case.payload.as_deref().unwrap_or_default();
                    if payload.as_deref().unwrap_or_default() != sent {
                        failures.push(format!("{}: raw payload not kept", case.label));
                    }
                }
                None => failures.push(format!("{}: no dead letter", case.label)),
            },
            Outcome::Row(bucket, key, meta) => {
                if let Some(letter) = letter {
                    failures.push(format!("{}: dead-lettered: {}", case.label, letter.3));
                    continue;
                }
                let found = db
                    .query_opt(
                        "SELECT user_metadata FROM current_objects WHERE bucket = $1 AND key = $2",
                        &[bucket, key],
                    )
                    .await
                    .unwrap();
                match found.map(|r| r.get::<_, Value>(0)) {
                    Some(got) if &got == meta => {}
                    Some(got) => failures.push(format!(
                        "{}: metadata {:.200} != {:.200}",
                        case.label,
                        got.to_string(),
                        meta.to_string()
                    )),
                    None => failures.push(format!("{}: row missing", case.label)),
                }
            }
            Outcome::Skipped(bucket, key) => {
                let rows: i64 = db
                    .query_one(
                        "SELECT count(*) FROM object_metadata WHERE bucket = $1 AND key = $2",
                        &[bucket, key],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if rows != 0 || letter.is_some() {
                    failures.push(format!("{}: not skipped", case.label));
                }
            }
        }
        checked += 1;
    }
    // The refused row alone is dead-lettered, with the database's reason;
    // its batch-mates (the neighbour and the last message) are written.
    let refused: Vec<_> = dead.iter().filter(|d| d.0 >= refused_offset).collect();
    assert_eq!(refused.len(), 1, "only the unindexable row: {refused:?}");
    assert_eq!(refused[0].0, refused_offset);
    assert!(
        refused[0].3.contains("database refused the row") && refused[0].3.contains("54000"),
        "{}",
        refused[0].3
    );
    let payload: Value = serde_json::from_slice(refused[0].2.as_deref().unwrap()).unwrap();
    assert_eq!(payload["key"], json!(unindexable), "the change is kept");
    assert_eq!(rejected, Some(1.0));
    let written: Vec<String> = db
        .query(
            "SELECT key FROM current_objects WHERE key IN ('neighbour.txt', 'last.txt') ORDER BY key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(written, vec!["last.txt", "neighbour.txt"]);
    let extra: i64 = db
        .query_one(
            "SELECT count(*) FROM object_metadata WHERE bucket = 'other' OR key = $1",
            &[&unindexable],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra, 0, "no row for the envelope's key or the refused key");
    let expected_dead = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Dead(_)))
        .count();
    assert_eq!(dead.len(), expected_dead + 1, "{:?}", failures);
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "hostile: {checked} cases + 1 refused row checked over {total} messages in {} batches, {} dead letters, 0 mismatches",
        batches.unwrap_or(0.0),
        dead.len()
    );
}
