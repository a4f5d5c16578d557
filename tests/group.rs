//! Two replicas in one consumer group split a 6-partition topic and
//! together leave exactly the state of the stream.

mod common;

use std::time::Duration;

use common::{assert_table_matches, oracle, wait_until, TestBed};
use objmeta::produce::{workload, WorkloadSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_partitions_and_write_everything() {
    let bed = TestBed::new("group", 6).await;
    let first = bed.start(&[]);
    let second = bed.start(&[]);
    let assigned = "objmeta_assigned_partitions";
    wait_until(
        Duration::from_secs(60),
        "both members to own 3 partitions",
        || async {
            let a = TestBed::metric(first.http_port, assigned).await?;
            let b = TestBed::metric(second.http_port, assigned).await?;
            (a == 3.0 && b == 3.0).then_some(())
        },
    )
    .await;

    let spec = WorkloadSpec {
        count: 20_000,
        buckets: 2,
        objects: 5_000,
        copy_percent: 10,
        delete_percent: 10,
        seed: 11,
    };
    let messages: Vec<(String, Vec<u8>)> = workload(&spec).map(|m| (m.key, m.payload)).collect();
    bed.publish(&messages).await;
    bed.wait_committed(messages.len() as i64, Duration::from_secs(120))
        .await;

    let upserted = r#"objmeta_rows_written_total{result="upserted"}"#;
    for member in [&first, &second] {
        let rows = TestBed::metric(member.http_port, upserted)
            .await
            .unwrap_or(0.0);
        assert!(rows > 0.0, "each member wrote rows of its partitions");
    }
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    assert_table_matches(&expected, &bed.table().await);
}
