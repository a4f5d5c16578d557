//! Reliability on the shared services (nothing here stops a service):
//! a crash loop of SIGKILLs over a hostile stream, rebalance churn with
//! three replicas and a stall detector, and graceful shutdown that leaves
//! nothing to reprocess.
//!
//! Sizes are shortened for CI; `scripts/chaos` runs the same tests with the
//! issue's full figures through OBJMETA_CHAOS_* variables.

mod common;

use std::time::{Duration, Instant};

use common::{assert_table_matches, hostile_stream, oracle, wait_until, Binary, TestBed};
use objmeta::produce::{workload, WorkloadSpec};
use rand::Rng;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stream(count: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let spec = WorkloadSpec {
        count,
        buckets: 3,
        // Repeated keys: every object changes about ten times.
        objects: (count / 10).max(1),
        copy_percent: 15,
        delete_percent: 10,
        seed,
    };
    let messages = workload(&spec).map(|m| (m.key, m.payload)).collect();
    // 10 % duplicates, and deliveries reordered within windows of 200.
    hostile_stream(messages, 10, 200, seed)
}

fn common_sum(offsets: &[i64]) -> i64 {
    offsets.iter().map(|o| (*o).max(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_of_sigkills_loses_nothing() {
    let events = setting("OBJMETA_CHAOS_EVENTS", 100_000);
    let kills = setting("OBJMETA_CHAOS_KILLS", 20) as usize;
    let bed = TestBed::new("crashloop", 6).await;
    let messages = stream(events, 23);
    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let started = Instant::now();

    // Three quarters of the stream are waiting when the loop starts; the rest is
    // published a slice at a time, each slice just before a kill, so that there is
    // uncommitted work to kill however fast objmeta catches up.
    let (backlog, flowing) = messages.split_at(messages.len() * 3 / 4);
    bed.publish(backlog).await;
    let mut slices = flowing.chunks(flowing.len().div_ceil(kills).max(1));
    let mut published = backlog.len() as i64;

    // Static membership: a restarted member takes its partitions back at
    // once instead of waiting for the killed one's session to expire.
    let member = format!("-Xgroup.instance.id={}", bed.group);
    let args = ["--batch-max-rows", "1000", member.as_str()];
    let mut service = bed.spawn_binary(&args);
    let mut rng = rand::rng();
    let mut mid_stream = 0;
    for _ in 0..kills {
        // Each run writes something before it dies, so the loop advances.
        let before = bed.committed_offsets();
        wait_until(
            Duration::from_secs(120),
            "the restarted member to commit",
            || async {
                let now = bed.committed_offsets();
                (now != before || common_sum(&now) == published).then_some(())
            },
        )
        .await;
        if let Some(slice) = slices.next() {
            bed.publish(slice).await;
            published += slice.len() as i64;
        }
        let moment = Duration::from_millis(rng.random_range(0..120));
        tokio::time::sleep(moment).await;
        assert!(
            service.running(),
            "objmeta died by itself:\n{}",
            service.log()
        );
        service.kill();
        if common_sum(&bed.committed_offsets()) < published {
            mid_stream += 1;
        }
        service = bed.spawn_binary(&args);
    }
    for slice in slices {
        bed.publish(slice).await;
    }
    bed.wait_committed(messages.len() as i64, Duration::from_secs(240))
        .await;
    let status = service.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", service.log());

    let actual = bed.table().await;
    assert_table_matches(&expected, &actual);
    assert_eq!(actual.len(), expected.len());
    assert!(
        mid_stream * 2 >= kills,
        "most kills should hit uncommitted work: {mid_stream} of {kills}"
    );
    eprintln!(
        "crash loop: {} messages ({events} events + duplicates, reordered), {kills} SIGKILLs \
         ({mid_stream} with uncommitted work), {} rows checked, 0 missing/extra/wrong, {:.0?}",
        messages.len(),
        actual.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_everything_written() {
    let bed = TestBed::new("graceful", 6).await;
    let messages = stream(setting("OBJMETA_CHAOS_GRACEFUL_EVENTS", 20_000), 5);
    // The second half is published only after the first run stopped, so
    // the first run stops mid-stream however fast it is.
    let (early, late) = messages.split_at(messages.len() / 2);
    bed.publish(early).await;
    let total = messages.len() as i64;

    // Stopped mid-stream: what was consumed is written and committed, and
    // the next run starts exactly there.
    let args = ["--batch-max-rows", "500"];
    let mut first = bed.spawn_binary(&args);
    wait_until(Duration::from_secs(60), "some progress", || async {
        let committed: i64 = bed.committed_offsets().iter().map(|o| (*o).max(0)).sum();
        (committed > 0).then_some(())
    })
    .await;
    let status = first.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", first.log());
    assert!(first.log().contains("shut down cleanly"), "{}", first.log());
    let committed_first: i64 = bed.committed_offsets().iter().map(|o| (*o).max(0)).sum();
    assert!(committed_first > 0 && committed_first <= early.len() as i64);
    bed.publish(late).await;

    let mut second = bed.spawn_binary(&args);
    bed.wait_committed(total, Duration::from_secs(120)).await;
    // The second run consumed exactly the rest: nothing below the first
    // run's commits was read again.
    assert_eq!(
        messages_seen(second.http_port).await,
        total - committed_first,
        "the second run read only what the first left"
    );
    let status = second.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", second.log());
    assert_eq!(bed.committed_offsets(), bed.end_offsets());

    // Everything is written: a third run writes nothing and reads nothing
    // until a new message arrives, then exactly that one.
    let third = bed.spawn_binary(&args);
    wait_until(Duration::from_secs(60), "the third run to join", || async {
        let assigned = TestBed::metric(third.http_port, "objmeta_assigned_partitions").await?;
        (assigned == 6.0).then_some(())
    })
    .await;
    let (key, payload) = common::minio_message(
        "s3:ObjectCreated:Put",
        "graceful",
        "sentinel.txt",
        2_000_000_000_000_000_000,
        None,
        &[],
    );
    bed.publish(&[(key, payload)]).await;
    bed.wait_committed(total + 1, Duration::from_secs(60)).await;
    assert_eq!(messages_seen(third.http_port).await, 1);
    let rows = TestBed::metric_sum(third.http_port, "objmeta_rows_written_total")
        .await
        .unwrap();
    assert_eq!(rows, 1.0, "only the sentinel was written again");
    eprintln!(
        "graceful shutdown: {total} messages, first run stopped at {committed_first} \
         and its restart read exactly the {} left; after the second stop committed == end offsets, \
         a third run read 1 new message and wrote 1 row",
        total - committed_first
    );
    drop(third);
    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let mut actual = bed.table().await;
    actual.retain(|id, _| id.bucket != "graceful");
    assert_table_matches(&expected, &actual);
    assert_eq!(actual.len(), expected.len());
}

/// Messages the member consumed and wrote or dead-lettered, from its
/// metrics: every record counts once per outcome, and this workload has one
/// record per message.
async fn messages_seen(http_port: u16) -> i64 {
    TestBed::metric_sum(http_port, "objmeta_events_consumed_total")
        .await
        .unwrap_or(0.0) as i64
}

/// One replica slot of the churn test.
struct Member {
    binary: Binary,
    progress: f64,
    progress_at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_churn_with_three_replicas_loses_nothing_and_never_stalls() {
    let events = setting("OBJMETA_CHAOS_CHURN_EVENTS", 30_000);
    let churn_for = Duration::from_secs(setting("OBJMETA_CHAOS_CHURN_SECS", 40));
    let stall_limit = Duration::from_secs(15);
    let bed = std::sync::Arc::new(TestBed::new("churn", 6).await);
    let messages = stream(events, 31);
    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));
    let total = messages.len() as i64;

    // Dynamic members (a graceful stop leaves the group at once) with a
    // short session, so a killed member's partitions move after 6 s.
    let args = [
        "--batch-max-rows",
        "500",
        "-Xsession.timeout.ms=6000",
        "-Xheartbeat.interval.ms=500",
    ];
    let spawn = |bed: &TestBed| Member {
        binary: bed.spawn_binary(&args),
        progress: 0.0,
        progress_at: Instant::now(),
    };
    let mut members: Vec<Member> = (0..3).map(|_| spawn(&bed)).collect();

    // The stream flows during the whole churn, so every partition always
    // has new messages and an owner that does not advance is stalled.
    let publisher = {
        let bed = bed.clone();
        let chunk = messages.len().div_ceil(40);
        let pause = churn_for / 40;
        let messages = messages.clone();
        tokio::spawn(async move {
            for slice in messages.chunks(chunk) {
                bed.publish(slice).await;
                tokio::time::sleep(pause).await;
            }
        })
    };

    let started = Instant::now();
    let mut rng = rand::rng();
    let (mut graceful, mut killed) = (0, 0);
    let mut next_change = Instant::now() + Duration::from_secs(3);
    let mut stalls = Vec::new();
    while started.elapsed() < churn_for {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (slot, member) in members.iter_mut().enumerate() {
            assert!(
                member.binary.running(),
                "member {slot} died:\n{}",
                member.binary.log()
            );
            let port = member.binary.http_port;
            let assigned = TestBed::metric(port, "objmeta_assigned_partitions")
                .await
                .unwrap_or(0.0);
            let progress = TestBed::metric_sum(port, "objmeta_events_consumed_total")
                .await
                .unwrap_or(0.0);
            if progress != member.progress || assigned == 0.0 {
                member.progress = progress;
                member.progress_at = Instant::now();
            } else if member.progress_at.elapsed() > stall_limit {
                stalls.push(format!(
                    "member {slot} owns {assigned} partitions but made no progress for {:?}",
                    member.progress_at.elapsed()
                ));
                member.progress_at = Instant::now();
            }
        }
        if Instant::now() >= next_change {
            let slot = rng.random_range(0..members.len());
            if rng.random_bool(0.5) {
                let status = members[slot]
                    .binary
                    .terminate(Duration::from_secs(60))
                    .await;
                assert!(
                    status.success(),
                    "{status:?}\n{}",
                    members[slot].binary.log()
                );
                graceful += 1;
            } else {
                members[slot].binary.kill();
                killed += 1;
            }
            members[slot] = spawn(&bed);
            next_change = Instant::now() + Duration::from_millis(rng.random_range(2000..4000));
        }
    }
    publisher.await.unwrap();
    assert!(stalls.is_empty(), "{stalls:#?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = bed.committed_offsets();
        if committed.iter().map(|o| (*o).max(0)).sum::<i64>() == total {
            break;
        }
        if Instant::now() > deadline {
            let mut report = format!("committed {committed:?} of {:?}\n", bed.end_offsets());
            for (slot, member) in members.iter().enumerate() {
                let body = common::http_get(member.binary.http_port, "/metrics")
                    .await
                    .map(|r| r.1)
                    .unwrap_or_default();
                let lines: Vec<&str> = body
                    .lines()
                    .filter(|l| {
                        l.starts_with("objmeta_assigned")
                            || l.starts_with("objmeta_consumer_paused")
                            || l.starts_with("objmeta_rebalances_total")
                            || l.starts_with("objmeta_committed_offset")
                            || l.starts_with("objmeta_consumer_lag")
                    })
                    .collect();
                report += &format!("member {slot}: {lines:?}\n--- log tail:\n{}\n", {
                    let log = member.binary.log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                });
            }
            panic!("stalled after churn:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rebalances: f64 = {
        let mut sum = 0.0;
        for member in &members {
            sum += TestBed::metric_sum(member.binary.http_port, "objmeta_rebalances_total")
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    for member in &mut members {
        let status = member.binary.terminate(Duration::from_secs(60)).await;
        assert!(status.success(), "{status:?}\n{}", member.binary.log());
    }
    let actual = bed.table().await;
    assert_table_matches(&expected, &actual);
    assert_eq!(actual.len(), expected.len());
    eprintln!(
        "churn: {total} messages, {graceful} graceful stops + {killed} kills in {churn_for:?}, \
         {rebalances} rebalance callbacks on the last members, 0 stalls, {} rows checked, 0 mismatches",
        actual.len()
    );
}
