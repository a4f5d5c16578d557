//! Memory is bounded in bytes: with writes locked out by another session,
//! a flood of large messages makes objmeta stop reading at its memory
//! budget instead of holding the flood, and once writes resume every
//! message lands whole (dead letters keep their full payload).

mod common;

use std::time::Duration;

use common::{wait_until, TestBed};

/// Peak resident set of a process, in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_waits_at_the_budget_and_loses_nothing() {
    const MESSAGES: usize = 400;
    const SIZE: usize = 100 * 1024;
    let bed = TestBed::new("memory", 2).await;
    let mut service = bed.spawn_binary(&["--memory-budget", "4MiB"]);
    let port = service.http_port;
    wait_until(Duration::from_secs(60), "objmeta ready", || async {
        (common::http_get(port, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let pid = service.child.id();
    let before = peak_rss(pid);

    let db = bed.db().await;
    db.batch_execute("BEGIN; LOCK TABLE object_metadata, dead_letters IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    // Not MinIO events: each becomes a dead letter that must keep all
    // 100 KiB; 40 MiB in all, ten times the budget.
    let messages: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|i| (format!("flood-{i}"), vec![b'a' + (i % 26) as u8; SIZE]))
        .collect();
    bed.publish(&messages).await;
    // Give the poller time to read everything it is allowed to.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let buffered = common::TestBed::metric(port, "objmeta_buffered_bytes")
        .await
        .unwrap_or(0.0);
    let grown = peak_rss(pid).saturating_sub(before);
    db.batch_execute("COMMIT").await.expect("unlock");

    bed.wait_committed(MESSAGES as i64, Duration::from_secs(120))
        .await;
    let status = service.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", service.log());
    let dead_letters = bed.dead_letters().await;
    let whole = dead_letters
        .iter()
        .filter(|(_, _, payload, _)| payload.as_ref().map(Vec::len) == Some(SIZE))
        .count();
    eprintln!(
        "memory: {MESSAGES} messages of {SIZE} bytes while locked: peak RSS grew {} KiB, \
         {buffered} bytes buffered (budget 4 MiB); {whole} dead letters whole",
        grown / 1024
    );
    assert_eq!(whole, MESSAGES, "every payload kept whole");
    assert!(buffered <= 4.0 * 1024.0 * 1024.0, "buffered {buffered}");
    // Without the budget the whole 40 MiB flood is held (2048 messages fit
    // the channel); with it, the budget plus allocator slack.
    assert!(
        grown < 16 * 1024 * 1024,
        "peak RSS grew {} MiB while writes were locked out",
        grown >> 20
    );
}
