//! The ordering rules on the real reduction and the real SQL: random
//! per-object histories, delivered in random orders with duplicates and
//! applied (a) one event per transaction and (b) in random batch splits,
//! must all give the same table, and that table must be the oracle's
//! (`common::oracle_of`, an implementation of the documented rules written
//! for the tests).

mod common;

use std::sync::OnceLock;

use clap::Parser;
use proptest::prelude::*;
use tokio::runtime::Runtime;
use tokio_postgres::Client;

use objmeta::batch::{Batch, Contribution, Origin};
use objmeta::budget::Reservation;
use objmeta::config::{Cli, Command, DatabaseConfig};
use objmeta::event::{self, Change};
use objmeta::sink::{self, Sink};

use common::{connect_schema, differences, minio_message, oracle_of, read_table, Positioned};

/// One operation of an object's history, with the gap to its sequencer.
#[derive(Clone, Debug)]
enum Op {
    Put,
    Copy,
    /// A tagging change: the same sequencer and version as the last
    /// creation, other metadata.
    Tag,
    /// A delete without a version id, or a delete marker when versioned.
    Delete,
    /// The delete of one earlier version or delete marker (the n-th created, modulo).
    DeleteVersion(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Put),
        1 => Just(Op::Copy),
        2 => Just(Op::Tag),
        2 => Just(Op::Delete),
        3 => (0usize..4).prop_map(Op::DeleteVersion),
    ]
}

/// An object's history: whether its bucket is versioned, and operations
/// with sequencer gaps.
fn object_history() -> impl Strategy<Value = (bool, Vec<(Op, u64)>)> {
    (any::<bool>(), prop::collection::vec((op(), 1u64..3), 1..8))
}

/// The changes of one object's history, in the order they happened.
fn changes_of(object: usize, versioned: bool, ops: &[(Op, u64)]) -> Vec<Change> {
    let key = format!("obj-{object}");
    let mut sequencer = 1_700_000_000_000_000_000u64;
    let mut versions: Vec<String> = Vec::new();
    let mut last_creation: Option<(u64, Option<String>)> = None;
    let mut out = Vec::new();
    for (n, (op, gap)) in ops.iter().enumerate() {
        let tag = format!("{n}");
        let message = match op {
            Op::Tag if last_creation.is_some() => {
                let (seq, version) = last_creation.clone().unwrap_or_default();
                minio_message(
                    "s3:ObjectCreated:PutTagging",
                    "b",
                    &key,
                    seq,
                    version.as_deref(),
                    &[("x-amz-meta-tag", &tag)],
                )
            }
            Op::Put | Op::Copy | Op::Tag => {
                sequencer += gap;
                let version = versioned.then(|| format!("v{n}"));
                versions.extend(version.clone());
                last_creation = Some((sequencer, version.clone()));
                let name = if matches!(op, Op::Copy) {
                    "s3:ObjectCreated:Copy"
                } else {
                    "s3:ObjectCreated:Put"
                };
                minio_message(
                    name,
                    "b",
                    &key,
                    sequencer,
                    version.as_deref(),
                    &[("x-amz-meta-id", &tag)],
                )
            }
            Op::Delete => {
                sequencer += gap;
                last_creation = None;
                if versioned {
                    let marker = format!("m{n}");
                    // A delete marker is a version too: deleting it revives the object.
                    versions.push(marker.clone());
                    let name = "s3:ObjectRemoved:DeleteMarkerCreated";
                    minio_message(name, "b", &key, sequencer, Some(&marker), &[])
                } else {
                    minio_message("s3:ObjectRemoved:Delete", "b", &key, sequencer, None, &[])
                }
            }
            Op::DeleteVersion(pick) => {
                if versions.is_empty() {
                    continue;
                }
                sequencer += gap;
                let version = versions.remove(pick % versions.len());
                if last_creation.as_ref().and_then(|c| c.1.as_ref()) == Some(&version) {
                    last_creation = None;
                }
                let name = "s3:ObjectRemoved:Delete";
                minio_message(name, "b", &key, sequencer, Some(&version), &[])
            }
        };
        let parsed = event::parse(Some(&message.1)).expect("generated message parses");
        out.extend(parsed.changes);
    }
    out
}

/// A whole scenario: every event with its source position (its Kafka
/// partition and offset), then the delivery order (indexes into the events,
/// duplicates included) and the batch boundaries of the split run.
#[derive(Clone, Debug)]
struct Scenario {
    events: Vec<Positioned>,
    delivery: Vec<usize>,
    cuts: Vec<bool>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(object_history(), 1..4)
        .prop_map(|objects| {
            objects
                .iter()
                .enumerate()
                .flat_map(|(i, (versioned, ops))| {
                    changes_of(i, *versioned, ops)
                        .into_iter()
                        .map(move |c| (c, i))
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|changes| {
            let n = changes.len();
            // The source order (which sets positions) is a shuffle of the
            // history: stores do not always publish in sequencer order.
            let source = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let most = if n == 0 { 0 } else { n / 2 + 1 };
            let duplicates = prop::collection::vec(0..n.max(1), 0..=most);
            let delivery = (Just((0..n).collect::<Vec<_>>()), duplicates)
                .prop_map(|(all, extra)| all.into_iter().chain(extra).collect::<Vec<_>>())
                .prop_shuffle();
            (Just(changes), source, delivery)
        })
        .prop_flat_map(|(changes, source, delivery)| {
            let cuts = prop::collection::vec(any::<bool>(), delivery.len());
            let mut offsets = [0i64; 2];
            let mut events: Vec<Positioned> = Vec::new();
            let mut positions = vec![(0, 0); changes.len()];
            for index in source {
                // Objects are spread over two partitions, as keyed messages.
                let partition = (changes[index].1 % 2) as i32;
                let slot = partition as usize;
                positions[index] = (partition, offsets[slot]);
                offsets[slot] += 1;
            }
            for (index, (change, _)) in changes.into_iter().enumerate() {
                events.push((change, positions[index]));
            }
            (Just(events), Just(delivery), cuts)
        })
        .prop_map(|(events, delivery, cuts)| Scenario {
            events,
            delivery,
            cuts,
        })
}

/// The shared runtime, database schema and sink of this test binary.
struct Fixture {
    runtime: Runtime,
    sink: Sink,
    client: Client,
    /// The tests of this file take turns on the one schema.
    turn: tokio::sync::Mutex<()>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = Runtime::new().expect("runtime");
        let services = common::services();
        let schema = format!("s_ordering_{}", std::process::id());
        let config = database_config(&services.database_url, &schema);
        let (sink, client) = runtime.block_on(async {
            objmeta::migrate(&config).await.expect("migrate");
            let pool = sink::connect(&config).expect("pool");
            let client = connect_schema(&services.database_url, &schema).await;
            (Sink::new(pool, "ordering".into()), client)
        });
        Fixture {
            runtime,
            sink,
            client,
            turn: tokio::sync::Mutex::new(()),
        }
    })
}

fn database_config(url: &str, schema: &str) -> DatabaseConfig {
    let cli = Cli::try_parse_from([
        "objmeta",
        "migrate",
        "--database-url",
        url,
        "--database-schema",
        schema,
    ])
    .expect("migrate arguments");
    match cli.command {
        Command::Migrate(config) => config,
        _ => unreachable!("parsed a migrate command"),
    }
}

/// Writes the delivered events through the real batch reduction and sink,
/// a batch ending after each event whose `cut` is set (and at the end).
async fn apply(sink: &Sink, scenario: &Scenario, cut_after: impl Fn(usize) -> bool) {
    let mut batch = Batch::default();
    for (i, &index) in scenario.delivery.iter().enumerate() {
        let (change, (partition, offset)) = &scenario.events[index];
        let origin = Origin {
            partition: *partition,
            offset: *offset,
        };
        batch.add(
            origin,
            Contribution::Changes(vec![change.clone()]),
            Reservation::default(),
        );
        if cut_after(i) || i + 1 == scenario.delivery.len() {
            sink.write(&batch.take()).await.expect("batch written");
        }
    }
}

/// Every column but `updated_at`, so that two runs compare exactly.
async fn whole_table(client: &Client) -> Vec<serde_json::Value> {
    client
        .query(
            "SELECT to_jsonb(t) - 'updated_at' FROM object_metadata t ORDER BY bucket, key",
            &[],
        )
        .await
        .expect("read table")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn check(scenario: &Scenario) -> Result<(), String> {
    let Fixture {
        sink, client, turn, ..
    } = fixture();
    let _turn = turn.lock().await;
    let expected = oracle_of(&scenario.events);
    let mut tables = Vec::new();
    for split in [false, true] {
        client
            .batch_execute("TRUNCATE object_metadata, object_versions, object_history")
            .await
            .map_err(|e| e.to_string())?;
        if split {
            apply(sink, scenario, |i| scenario.cuts[i]).await;
        } else {
            apply(sink, scenario, |_| true).await;
        }
        let diff = differences(&expected, &read_table(client).await);
        if !diff.is_empty() {
            let run = if split { "split" } else { "one at a time" };
            return Err(format!("{run}: {diff:?}"));
        }
        tables.push(whole_table(client).await);
    }
    if tables[0] != tables[1] {
        return Err(format!(
            "one at a time and split differ:\n{:#?}\n{:#?}",
            tables[0], tables[1]
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_order_and_split_gives_the_oracle_table(scenario in scenario()) {
        let result = fixture().runtime.block_on(check(&scenario));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// The case a review found: the table holds v0; one batch holds Put v1,
/// Put v2 and the delete of version v2. As in S3, v1 is then current, one
/// event at a time as in the batch.
#[test]
fn a_batch_deleting_its_own_newest_version_reveals_the_previous_one() {
    let put = |seq, version: &str| {
        minio_message("s3:ObjectCreated:Put", "b", "k", seq, Some(version), &[])
    };
    let delete = minio_message("s3:ObjectRemoved:Delete", "b", "k", 30, Some("v2"), &[]);
    let messages = [put(10, "v0"), put(20, "v1"), put(25, "v2"), delete];
    let events: Vec<Positioned> = messages
        .iter()
        .enumerate()
        .map(|(i, (_, payload))| {
            let change = event::parse(Some(payload))
                .expect("parses")
                .changes
                .remove(0);
            (change, (0, i as i64))
        })
        .collect();
    let one_at_a_time = Scenario {
        events: events.clone(),
        delivery: vec![0, 1, 2, 3],
        cuts: vec![true, false, false, true],
    };
    let expected = oracle_of(&events);
    let row = &expected[&objmeta::event::ObjectId {
        bucket: "b".into(),
        key: "k".into(),
    }];
    assert_eq!(
        (row.deleted, row.version_id.as_deref()),
        (false, Some("v1"))
    );
    let result = fixture().runtime.block_on(check(&one_at_a_time));
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

/// A redelivered batch whose merge changes nothing writes nothing: the
/// rows keep their row version (same `xmin`), and every row counts as
/// stale.
#[test]
fn a_redelivered_batch_writes_no_new_row_versions() {
    let Fixture {
        runtime,
        sink,
        client,
        turn,
    } = fixture();
    runtime.block_on(async {
        let _turn = turn.lock().await;
        client
            .batch_execute("TRUNCATE object_metadata, object_versions, object_history")
            .await
            .expect("truncate");
        let messages = [
            minio_message("s3:ObjectCreated:Put", "b", "live", 10, Some("v1"), &[]),
            minio_message("s3:ObjectCreated:Put", "b", "gone", 10, None, &[]),
            minio_message("s3:ObjectRemoved:Delete", "b", "gone", 20, None, &[]),
            minio_message(
                "s3:ObjectCreated:Put",
                "b",
                "versioned",
                10,
                Some("v1"),
                &[],
            ),
            minio_message(
                "s3:ObjectRemoved:Delete",
                "b",
                "versioned",
                20,
                Some("v1"),
                &[],
            ),
        ];
        let batch = || {
            let mut batch = Batch::default();
            for (offset, (_, payload)) in (0i64..).zip(&messages) {
                let changes = event::parse(Some(payload)).expect("parses").changes;
                let origin = Origin {
                    partition: 0,
                    offset,
                };
                batch.add(
                    origin,
                    Contribution::Changes(changes),
                    Reservation::default(),
                );
            }
            batch.take()
        };
        let versions = || async {
            client
                .query(
                    "SELECT key, xmin::text FROM object_metadata ORDER BY key",
                    &[],
                )
                .await
                .expect("row versions")
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
                .collect::<Vec<_>>()
        };
        sink.write(&batch()).await.expect("first delivery");
        let before = versions().await;
        let report = sink.write(&batch()).await.expect("redelivery");
        assert_eq!(versions().await, before);
        assert_eq!(
            (report.upserted, report.tombstoned, report.stale),
            (0, 0, 3)
        );
    });
}
