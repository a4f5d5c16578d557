//! Faults of the services themselves: PostgreSQL down for half a minute
//! and the Kafka broker restarted, both mid-stream. Each test stops a
//! service, so each runs on its own private instance (scripts/services with
//! OBJMETA_SERVICES_INSTANCE) and never disturbs the other tests.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_table_matches, http_get, oracle, wait_until, PrivateServices, TestBed};
use objmeta::produce::{workload, WorkloadSpec};

fn stream(count: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let spec = WorkloadSpec {
        count,
        buckets: 2,
        objects: count / 8,
        copy_percent: 15,
        delete_percent: 10,
        seed,
    };
    let messages = workload(&spec).map(|m| (m.key, m.payload)).collect();
    common::hostile_stream(messages, 10, 100, seed)
}

fn sum(offsets: &[i64]) -> i64 {
    offsets.iter().map(|o| (*o).max(0)).sum()
}

/// Publishes `messages` in `chunks` slices, `pause` apart.
fn publish_paced(
    bed: &Arc<TestBed>,
    messages: Vec<(String, Vec<u8>)>,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let bed = bed.clone();
    tokio::spawn(async move {
        for slice in messages.chunks(messages.len().div_ceil(chunks)) {
            bed.publish(slice).await;
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_mid_stream_keeps_membership_commits_nothing_unwritten_and_catches_up() {
    let outage = Duration::from_secs(
        std::env::var("OBJMETA_CHAOS_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let instance = PrivateServices::start("outage");
    let bed = Arc::new(TestBed::on(instance.services.clone(), "outage", 6, &[]).await);
    let messages = stream(24_000, 41);
    let (before, rest) = messages.split_at(8_000);
    let (during, after) = rest.split_at(8_000);

    let service = bed.start(&["--retry-max-backoff", "4s", "--batch-max-rows", "500"]);
    let port = service.http_port;
    bed.publish(before).await;
    bed.wait_committed(before.len() as i64, Duration::from_secs(120))
        .await;
    let assigns_before = TestBed::metric(port, r#"objmeta_rebalances_total{kind="assign"}"#).await;
    assert_eq!(
        TestBed::metric(port, "objmeta_assigned_partitions").await,
        Some(6.0)
    );

    // The database dies while the stream flows.
    let flowing = publish_paced(&bed, during.to_vec(), 10, Duration::from_millis(200));
    wait_until(Duration::from_secs(60), "writes mid-stream", || async {
        (sum(&bed.committed_offsets()) > before.len() as i64 + 500).then_some(())
    })
    .await;
    instance.ctl_async(&["pg-stop", "immediate"]).await;
    let stopped = Instant::now();
    // Everything published from here on cannot be written until the
    // database is back, so it must never be committed before that.
    let published_at_stop = bed.end_offsets();
    flowing.await.unwrap();
    let during_outage = publish_paced(&bed, after.to_vec(), 5, Duration::from_millis(500));

    wait_until(Duration::from_secs(15), "/readyz to fail", || async {
        let (status, _) = http_get(port, "/readyz").await?;
        (status == 503).then_some(())
    })
    .await;
    let mut samples = Vec::new();
    let mut settled: Option<Vec<i64>> = None;
    while stopped.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            !service.task.is_finished(),
            "objmeta stopped during the outage"
        );
        let committed = bed.committed_offsets();
        for (p, (c, bound)) in committed.iter().zip(&published_at_stop).enumerate() {
            assert!(
                c <= bound,
                "partition {p}: committed {c} past {bound}, data published after the database died"
            );
        }
        // A batch written just before the stop may still commit in the
        // first seconds; after that the offsets must not move.
        if stopped.elapsed() > Duration::from_secs(5) {
            match &settled {
                None => settled = Some(committed.clone()),
                Some(settled) => assert_eq!(
                    &committed, settled,
                    "committed offsets advanced while the database was down"
                ),
            }
        }
        let (status, _) = http_get(port, "/readyz").await.expect("http answers");
        assert_eq!(status, 503, "not ready while the database is down");
        assert_eq!(
            TestBed::metric(port, "objmeta_assigned_partitions").await,
            Some(6.0),
            "membership kept"
        );
        samples.push(sum(&committed));
    }
    let errors = TestBed::metric_sum(port, "objmeta_database_errors_total")
        .await
        .unwrap();
    let retries = TestBed::metric(port, "objmeta_database_retries_total")
        .await
        .unwrap();
    assert!(errors >= 3.0, "errors counted: {errors}");
    assert!(retries >= 3.0, "retries counted: {retries}");
    // Backoff, not a hot loop: retries start 100 ms apart and double.
    assert!(
        retries <= outage.as_secs_f64() * 2.0 + 10.0,
        "too many retries for a backoff: {retries} in {outage:?}"
    );
    // Capped backoff: at most 4 s apart, so a 30 s outage sees several.
    assert!(
        retries >= (outage.as_secs() / 4 - 1) as f64,
        "retries at most 4 s apart: {retries} in {outage:?}"
    );
    assert_eq!(
        TestBed::metric(port, r#"objmeta_rebalances_total{kind="lost"}"#).await,
        Some(0.0)
    );
    assert_eq!(
        TestBed::metric(port, r#"objmeta_rebalances_total{kind="assign"}"#).await,
        assigns_before,
        "no rebalance during the outage"
    );
    let outage_length = stopped.elapsed();
    instance.ctl_async(&["pg-start"]).await;

    during_outage.await.unwrap();
    let caught_up = Instant::now();
    bed.wait_committed(messages.len() as i64, Duration::from_secs(120))
        .await;
    let catch_up = caught_up.elapsed();
    wait_until(Duration::from_secs(30), "/readyz again", || async {
        let (status, _) = http_get(port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    service.stop().await.expect("clean stop after the outage");

    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let actual = bed.table().await;
    assert_table_matches(&expected, &actual);
    let dead: i64 = bed
        .db()
        .await
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    eprintln!(
        "database outage: {:.1?} down mid-stream, {} messages, committed stayed at {:?} (bound {}), \
         {errors} database errors, {retries} retries, membership kept, caught up in {catch_up:.1?}, \
         {} rows checked, 0 mismatches",
        outage_length,
        messages.len(),
        samples.last(),
        sum(&published_at_stop),
        actual.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_reconnects_and_loses_nothing() {
    let instance = PrivateServices::start("broker");
    let bed = Arc::new(TestBed::on(instance.services.clone(), "broker", 6, &[]).await);
    let messages = stream(20_000, 43);
    let (first, second) = messages.split_at(10_000);

    let service = bed.start(&["--batch-max-rows", "500"]);
    let port = service.http_port;
    let flowing = publish_paced(&bed, first.to_vec(), 10, Duration::from_millis(200));
    wait_until(Duration::from_secs(60), "writes mid-stream", || async {
        (sum(&bed.committed_offsets()) > 1_000).then_some(())
    })
    .await;
    flowing.await.unwrap();
    let stopped = Instant::now();
    instance.ctl_async(&["kafka-stop"]).await;
    // The producer buffers what is published while the broker is away.
    let buffered = publish_paced(&bed, second.to_vec(), 10, Duration::from_millis(100));
    instance.ctl_async(&["kafka-start"]).await;
    let down = stopped.elapsed();
    buffered.await.unwrap();
    bed.wait_committed(messages.len() as i64, Duration::from_secs(180))
        .await;
    assert!(!service.task.is_finished(), "objmeta kept running");
    let kafka_errors = TestBed::metric(port, "objmeta_kafka_errors_total").await;
    service.stop().await.expect("clean stop after the restart");

    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let actual = bed.table().await;
    assert_table_matches(&expected, &actual);
    eprintln!(
        "broker restart: broker away {down:.1?} mid-stream, {} messages, {kafka_errors:?} kafka errors seen, \
         reconnected by itself, {} rows checked, 0 mismatches",
        messages.len(),
        actual.len()
    );
}
