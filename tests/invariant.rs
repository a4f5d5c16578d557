//! "Committed implies written", sampled continuously while things go wrong:
//! writes blocked by another session's lock until backpressure fills the
//! lanes and the channel, the member frozen (SIGSTOP) past its session
//! timeout so that its partitions are lost and come back, and the member
//! SIGKILLed right after its first commit after the thaw, then restarted.
//!
//! Every message names a distinct object, and every row records the Kafka
//! position of its event, so the invariant is checkable at any moment: for
//! each partition, the rows of offsets below the committed offset must
//! number exactly the committed offset.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use common::{Binary, OffsetReader, TestBed};
use objmeta::produce::{workload, WorkloadSpec};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the sampler saw in one phase.
#[derive(Debug, Default)]
struct Phase {
    samples: u64,
    violations: Vec<String>,
}

struct Sampler {
    reader: OffsetReader,
    db: Client,
    phases: BTreeMap<&'static str, Phase>,
    last: Vec<i64>,
}

impl Sampler {
    /// One sample: the committed offsets first, then the rows. A commit
    /// seen here happened before the rows are read, so every row it covers
    /// must already be visible.
    async fn sample(&mut self, phase: &'static str) {
        // Skipped while the coordinator does not answer (electing, busy).
        let Ok(committed) = self.reader.committed() else {
            return;
        };
        let committed: Vec<i64> = committed.into_iter().map(|o| o.max(0)).collect();
        let entry = self.phases.entry(phase).or_default();
        let mut violations = Vec::new();
        for (partition, &commit) in (0i32..).zip(&committed) {
            let written = self
                .db
                .query_one(
                    "SELECT count(*) FROM object_metadata \
                     WHERE kafka_partition = $1 AND kafka_offset < $2",
                    &[&partition, &commit],
                )
                .await;
            let Ok(written) = written else {
                return;
            };
            let written: i64 = written.get(0);
            if written != commit {
                violations.push(format!(
                    "partition {partition}: committed {commit}, rows below it {written}"
                ));
            }
        }
        entry.samples += 1;
        entry.violations.extend(violations);
        self.last = committed;
    }

    /// Samples every 50 ms for `duration`.
    async fn sample_for(&mut self, phase: &'static str, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.sample(phase).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Samples until `done` holds of the committed offsets (or panics after
    /// `timeout`).
    async fn sample_until(
        &mut self,
        phase: &'static str,
        timeout: Duration,
        done: impl Fn(&[i64]) -> bool,
    ) {
        let until = Instant::now() + timeout;
        loop {
            self.sample(phase).await;
            if done(&self.last) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{phase}: timed out at {:?}",
                self.last
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn signal(service: &Binary, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &service.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name}");
}

fn messages(count: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let spec = WorkloadSpec {
        count,
        buckets: 2,
        objects: count,
        copy_percent: 0,
        delete_percent: 0,
        seed,
    };
    workload(&spec).map(|m| (m.key, m.payload)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_never_pass_written_rows_under_locks_freezes_and_kills() {
    let per_slice = setting("OBJMETA_CHAOS_FREEZE_EVENTS", 6_000);
    let bed = TestBed::new("invariant", 3).await;
    let all = messages(per_slice * 4, 91);
    let slices: Vec<&[(String, Vec<u8>)]> = all.chunks(per_slice as usize).collect();
    let args = [
        "--batch-max-rows",
        "200",
        // The broker's minimum session timeout: a freeze of 10 s loses it.
        "-Xsession.timeout.ms=6000",
        "-Xheartbeat.interval.ms=1000",
    ];
    let mut service = bed.spawn_binary(&args);
    let db = bed.db().await;
    let mut sampler = Sampler {
        reader: OffsetReader::new(&bed),
        db: bed.db().await,
        phases: BTreeMap::new(),
        last: Vec::new(),
    };
    let total = |upto: usize| -> i64 { slices[..upto].iter().map(|s| s.len() as i64).sum() };
    let sum = |offsets: &[i64]| offsets.iter().sum::<i64>();

    // 1. Normal flow.
    bed.publish(slices[0]).await;
    let first = total(1);
    sampler
        .sample_until("flowing", Duration::from_secs(120), |c| sum(c) == first)
        .await;

    // 2. Writes blocked by a lock another session holds (EXCLUSIVE blocks
    // objmeta's writes, not the sampler's reads) while a slice arrives:
    // backpressure fills the lanes and the channel.
    db.batch_execute("BEGIN; LOCK TABLE object_metadata IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    bed.publish(slices[1]).await;
    sampler.sample_for("locked", Duration::from_secs(6)).await;
    db.batch_execute("COMMIT").await.expect("unlock");
    let second = total(2);
    sampler
        .sample_until("unlocked", Duration::from_secs(120), |c| sum(c) == second)
        .await;

    // 3. Frozen past the session timeout with a slice waiting, then thawed:
    // the partitions are lost and assigned back to the same member.
    bed.publish(slices[2]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&service, "STOP");
    sampler.sample_for("frozen", Duration::from_secs(10)).await;
    let before_thaw = sampler.last.clone();
    signal(&service, "CONT");

    // 4. Killed right after the first commit following the thaw.
    sampler
        .sample_until("thawed", Duration::from_secs(120), |c| {
            c != before_thaw.as_slice()
        })
        .await;
    service.kill();
    let frozen_log = service.log();
    assert!(
        frozen_log.contains("partitions lost"),
        "the freeze did not lose the partitions:\n{frozen_log}"
    );
    bed.publish(slices[3]).await;
    service = bed.spawn_binary(&args);
    let everything = total(4);
    sampler
        .sample_until("restarted", Duration::from_secs(180), |c| {
            sum(c) == everything
        })
        .await;
    let status = service.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", service.log());

    let rows: i64 = db
        .query_one("SELECT count(*) FROM object_metadata", &[])
        .await
        .expect("count rows")
        .get(0);
    let missing = everything - rows;
    let mut report = Vec::new();
    for (phase, seen) in &sampler.phases {
        report.push(format!(
            "{phase}: {} samples, {} violations",
            seen.samples,
            seen.violations.len()
        ));
    }
    eprintln!(
        "freeze and thaw: {everything} messages, {missing} missing rows; {}",
        report.join("; ")
    );
    for (phase, seen) in &sampler.phases {
        assert!(
            seen.violations.is_empty(),
            "{phase}: {:?}",
            &seen.violations[..seen.violations.len().min(5)]
        );
    }
    // "thawed" ends at the first commit after the thaw, by design.
    let minimum = [
        ("flowing", 5),
        ("locked", 20),
        ("unlocked", 3),
        ("frozen", 20),
        ("thawed", 1),
        ("restarted", 5),
    ];
    for (phase, least) in minimum {
        let samples = sampler.phases.get(phase).map_or(0, |p| p.samples);
        assert!(samples >= least, "{phase}: only {samples} samples");
    }
    assert_eq!(missing, 0);
}
