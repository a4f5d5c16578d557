//! Crash safety: objmeta killed with SIGKILL at random moments while the
//! stream flows, restarted each time, ends with every object right and the
//! committed offsets at the end of every partition.

mod common;

use std::time::Duration;

use common::{assert_table_matches, oracle, TestBed};
use objmeta::produce::{workload, WorkloadSpec};
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let bed = TestBed::new("restart", 6).await;
    let spec = WorkloadSpec {
        count: 30_000,
        buckets: 3,
        objects: 4_000,
        copy_percent: 15,
        delete_percent: 10,
        seed: 7,
    };
    let messages: Vec<(String, Vec<u8>)> = workload(&spec).map(|m| (m.key, m.payload)).collect();
    let expected = oracle(messages.iter().map(|(_, p)| p.as_slice()));

    // Publish in slices while the service runs, killing it between slices.
    let mut rng = rand::rng();
    // Static membership: a restarted member takes its partitions back at
    // once instead of waiting for the killed one's session to expire.
    let member = format!("-Xgroup.instance.id={}", bed.group);
    let small_batches = ["--batch-max-rows", "500", member.as_str()];
    let mut service = bed.spawn_binary(&small_batches);
    let slices = 4;
    for slice in messages.chunks(messages.len() / slices + 1) {
        bed.publish(slice).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        service.kill();
        service = bed.spawn_binary(&small_batches);
    }
    bed.wait_committed(messages.len() as i64, Duration::from_secs(120))
        .await;

    // A graceful stop after the last commit exits 0.
    let pid = service.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = common::wait_until(Duration::from_secs(60), "objmeta to exit", || {
        let exited = service.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(
        exit.success(),
        "exit status {exit:?}; log:\n{}",
        service.log()
    );
    assert!(
        service.log().contains("shut down cleanly"),
        "{}",
        service.log()
    );

    let actual = bed.table().await;
    assert_table_matches(&expected, &actual);
    assert_eq!(actual.len(), expected.len());
}
