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

/// Static membership (`--group-instance-id`, what the Helm chart sets to the
/// pod name): a member that stops does not leave the group, so the other
/// keeps its own partitions instead of taking over; the member that comes
/// back under the same id within the session timeout gets its partitions
/// back without waiting for it, and writes what arrived meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_gets_its_partitions_back_after_a_restart() {
    let bed = TestBed::new("static", 6).await;
    let session = ["-X", "session.timeout.ms=40000"];
    let member = |id: &'static str| -> Vec<&'static str> {
        let mut args = vec!["--group-instance-id", id];
        args.extend_from_slice(&session);
        args
    };
    let assigned = "objmeta_assigned_partitions";
    let owns = |port: u16| async move { TestBed::metric(port, assigned).await };
    let first = bed.start(&member("objmeta-0"));
    let second = bed.start(&member("objmeta-1"));
    wait_until(Duration::from_secs(60), "both members to own 3", || async {
        (owns(first.http_port).await? == 3.0 && owns(second.http_port).await? == 3.0).then_some(())
    })
    .await;

    first.stop().await.unwrap();
    let stopped = std::time::Instant::now();
    let spec = WorkloadSpec {
        count: 3_000,
        buckets: 1,
        objects: 600,
        copy_percent: 0,
        delete_percent: 10,
        seed: 5,
    };
    let messages: Vec<(String, Vec<u8>)> = workload(&spec).map(|m| (m.key, m.payload)).collect();
    bed.publish(&messages).await;
    // A dynamic member would have sent LeaveGroup and the other one would own
    // all 6 partitions within a second or two.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        owns(second.http_port).await,
        Some(3.0),
        "the other member took over"
    );

    let again = bed.start(&member("objmeta-0"));
    wait_until(
        Duration::from_secs(30),
        "the restarted member to own 3",
        || async { (owns(again.http_port).await? == 3.0).then_some(()) },
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(40),
        "partitions came back only after the session timeout: {:?}",
        stopped.elapsed()
    );
    assert_eq!(owns(second.http_port).await, Some(3.0));
    bed.wait_committed(messages.len() as i64, Duration::from_secs(60))
        .await;
    again.stop().await.unwrap();
    second.stop().await.unwrap();
    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    assert_table_matches(&expected, &bed.table().await);
}
