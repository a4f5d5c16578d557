//! Every wait has a bound, and what repeats is not retried forever: batches
//! too slow for `statement_timeout` are split, a row that keeps failing is
//! dead-lettered, a lane stuck on another session's lock does not stop the
//! others, shutdown ends within its timeout while a write hangs, and
//! liveness tells a member that retries from one that hangs.
//!
//! The liveness test stops (and SIGSTOPs) PostgreSQL, so it runs on its own
//! private instance; the others use the shared services and their own schema.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, minio_message, wait_until, PrivateServices, TestBed};

fn put(key: &str, sequencer: u64) -> (String, Vec<u8>) {
    minio_message(
        "s3:ObjectCreated:Put",
        "bucket",
        key,
        1_764_000_000_000_000_000 + sequencer,
        None,
        &[],
    )
}

async fn wait_ready(port: u16) {
    wait_until(Duration::from_secs(60), "/readyz", || async {
        let (status, _) = http_get(port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
}

async fn status(port: u16, path: &str) -> u16 {
    http_get(port, path).await.map_or(0, |(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_slow_for_the_statement_timeout_is_split_and_a_row_that_keeps_failing_is_dead_lettered(
) {
    let bed = TestBed::new("split", 1).await;
    let service = bed
        .start(&[
            "--database-statement-timeout",
            "1s",
            "--database-lock-timeout",
            "500ms",
            "--batch-max-rows",
            "400",
            "--batch-max-age",
            "3s",
            "--retry-max-backoff",
            "500ms",
        ])
        .await_ready()
        .await;
    // Real PostgreSQL work: 5 ms per row, so 400 rows take 2 s and time out;
    // 100 rows take 0.5 s and fit. One object's row runs out of memory.
    bed.db()
        .await
        .batch_execute(
            "CREATE FUNCTION slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.key = 'poison' THEN
                 RAISE EXCEPTION 'no memory for this row' USING ERRCODE = 'out_of_memory';
               END IF;
               PERFORM pg_sleep(0.005);
               RETURN NEW;
             END $$;
             CREATE TRIGGER slow_rows BEFORE INSERT OR UPDATE ON object_metadata
               FOR EACH ROW EXECUTE FUNCTION slow_rows();",
        )
        .await
        .unwrap();
    let mut messages: Vec<_> = (0..800).map(|i| put(&format!("k{i}"), i)).collect();
    messages.insert(300, put("poison", 10_000));
    bed.publish(&messages).await;

    bed.wait_committed(messages.len() as i64, Duration::from_secs(120))
        .await;
    bed.wait_rows(800, Duration::from_secs(10)).await;
    let dead = bed.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, 300);
    assert!(dead[0].3.contains("53200"), "reason: {}", dead[0].3);
    let port = service.http_port;
    let rejected = TestBed::metric(port, r#"objmeta_rows_written_total{result="rejected"}"#).await;
    assert_eq!(rejected, Some(1.0));
    let too_large = TestBed::metric_sum(port, "objmeta_database_errors_total")
        .await
        .unwrap();
    service.stop().await.expect("clean stop");
    eprintln!(
        "split: {} messages in batches of 400 against a 1 s statement timeout, all written \
         after {too_large} database errors; the poisoned row dead-lettered with 53200",
        messages.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_stuck_on_a_row_lock_does_not_stop_the_other_lanes() {
    let bed = TestBed::new("stuck_lane", 2).await;
    let service = bed
        .start(&[
            "--write-concurrency",
            "2",
            "--batch-max-rows",
            "50",
            "--database-statement-timeout",
            "5s",
            "--database-lock-timeout",
            "1s",
            "--retry-max-backoff",
            "1s",
        ])
        .await_ready()
        .await;
    bed.publish_with(&[put("locked", 0)], |_| Some(0)).await;
    bed.wait_committed(1, Duration::from_secs(60)).await;

    // Another session holds the row lock of an object of partition 0 (lane 0).
    let holder = bed.db().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one(
            "SELECT key FROM object_metadata WHERE key = 'locked' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    let mut first: Vec<_> = vec![put("locked", 1)];
    first.extend((0..300).map(|i| put(&format!("p0-{i}"), i + 10)));
    let second: Vec<_> = (0..1000).map(|i| put(&format!("p1-{i}"), i + 10)).collect();
    bed.publish_with(&first, |_| Some(0)).await;
    bed.publish_with(&second, |_| Some(1)).await;
    let ends = bed.end_offsets();

    wait_until(
        Duration::from_secs(60),
        "partition 1 committed while lane 0 waits for the lock",
        || async {
            let committed = bed.committed_offsets();
            (committed[1] == ends[1]).then_some(())
        },
    )
    .await;
    let committed = bed.committed_offsets();
    assert!(
        committed[0] <= 1,
        "partition 0 committed {} past the locked write",
        committed[0]
    );
    // Partition 1 may well be done before the first lock timeout (1 s).
    let port = service.http_port;
    wait_until(
        Duration::from_secs(30),
        "a lock timeout retried",
        || async {
            let errors =
                TestBed::metric(port, r#"objmeta_database_errors_total{kind="transient"}"#).await?;
            (errors >= 1.0).then_some(())
        },
    )
    .await;
    assert!(
        bed.committed_offsets()[0] <= 1,
        "partition 0 committed past the locked write"
    );
    assert_eq!(
        bed.dead_letters().await.len(),
        0,
        "a lock never dead-letters"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    bed.wait_committed(ends.iter().sum(), Duration::from_secs(60))
        .await;
    bed.wait_rows(1 + 300 + 1000, Duration::from_secs(10)).await;
    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_write_hangs_on_a_lock_exits_within_the_shutdown_timeout_non_zero() {
    let bed = TestBed::new("hung_shutdown", 1).await;
    let shutdown_timeout = Duration::from_secs(3);
    let mut binary = bed.spawn_binary_env(
        &[],
        &[
            ("SHUTDOWN_TIMEOUT", "3s"),
            ("DATABASE_STATEMENT_TIMEOUT", "10m"),
            ("DATABASE_LOCK_TIMEOUT", "5m"),
            ("BATCH_MAX_AGE", "20ms"),
        ],
    );
    wait_ready(binary.http_port).await;
    let before: Vec<_> = (0..20).map(|i| put(&format!("a{i}"), i)).collect();
    bed.publish(&before).await;
    bed.wait_committed(20, Duration::from_secs(60)).await;

    // Reads still work; objmeta's writes wait for the lock.
    let holder = bed.db().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE object_metadata IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let after: Vec<_> = (0..20).map(|i| put(&format!("b{i}"), 100 + i)).collect();
    bed.publish(&after).await;
    let observer = bed.db().await;
    wait_until(
        Duration::from_secs(30),
        "a write waiting for the lock",
        || async {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE NOT l.granted AND c.relname = 'object_metadata'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (waiting > 0).then_some(())
        },
    )
    .await;

    let signalled = Instant::now();
    // Writes end at the deadline; closing the consumer (leaving the group)
    // is bounded separately and takes about a second against a live broker.
    let status = binary
        .terminate(shutdown_timeout + Duration::from_secs(10))
        .await;
    let took = signalled.elapsed();
    assert!(
        !status.success(),
        "abandoned work must exit non-zero: {status:?}"
    );
    assert!(
        binary.log().contains("abandoned"),
        "the reason is logged:\n{}",
        binary.log()
    );
    assert_eq!(
        bed.committed_offsets(),
        vec![20],
        "no offset past written rows"
    );
    // The abandoned statement was cancelled: after the lock is released,
    // nothing of the second batch appears.
    holder.batch_execute("COMMIT").await.unwrap();
    let waiting = wait_until(
        Duration::from_secs(10),
        "no objmeta session left waiting",
        || async {
            let n: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'objmeta' \
                 AND state <> 'idle'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 0).then_some(n)
        },
    )
    .await;
    let rows: i64 = observer
        .query_one("SELECT count(*) FROM object_metadata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 20, "only the first batch was written");
    eprintln!(
        "hung shutdown: SIGTERM with a write blocked on a table lock, exited {status:?} after \
         {took:.1?} (SHUTDOWN_TIMEOUT {shutdown_timeout:?}), committed offsets stayed at 20, \
         {waiting} sessions left, 20 rows"
    );
}

/// Sends `signal` to the instance's postmaster and all its backends.
fn signal_postgres(instance: &PrivateServices, signal: &str) {
    let pid_file = std::path::Path::new(instance.var("PG_DATA_DIR")).join("postmaster.pid");
    let text = std::fs::read_to_string(pid_file).expect("postmaster.pid");
    let postmaster = text.lines().next().expect("pid line").trim().to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .expect("pgrep");
    let mut pids = vec![postmaster];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(&pids)
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pids:?}");
}

/// Sends SIGCONT to the instance's server when dropped: a failing assertion while the server
/// is stopped must not leave it stopped for the next run (whose start would wait on it).
struct Thaw<'a>(&'a PrivateServices);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        signal_postgres(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_keeps_a_retrying_member_alive_and_fails_a_hung_one() {
    let instance = PrivateServices::start("liveness");
    let bed = TestBed::on(instance.services.clone(), "liveness", 2, &[]).await;
    let stall = Duration::from_secs(5);
    let service = bed
        .start(&[
            "--health-stall-timeout",
            "5s",
            "--retry-max-backoff",
            "1s",
            "--database-statement-timeout",
            "2s",
            "--database-lock-timeout",
            "1s",
            "--database-connect-timeout",
            "1s",
            "--database-keepalives-idle",
            "1s",
            "--database-keepalives-interval",
            "1s",
            "--database-keepalives-retries",
            "2",
        ])
        .await_ready()
        .await;
    let port = service.http_port;
    bed.publish(&[put("first", 0)]).await;
    bed.wait_committed(1, Duration::from_secs(60)).await;

    // An outage three times the stall timeout, with a write retrying.
    instance.ctl_async(&["pg-stop", "immediate"]).await;
    bed.publish(&[put("during-outage", 1)]).await;
    let stopped = Instant::now();
    while stopped.elapsed() < stall * 3 {
        assert_eq!(status(port, "/healthz").await, 200, "retrying is alive");
        if stopped.elapsed() > Duration::from_secs(3) {
            assert_eq!(status(port, "/readyz").await, 503, "not ready in an outage");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    instance.ctl_async(&["pg-start"]).await;
    bed.wait_committed(2, Duration::from_secs(60)).await;
    wait_ready(port).await;

    // The server stops answering: a write hangs on its open connection
    // (the kernel still acknowledges, so keepalives see nothing).
    signal_postgres(&instance, "STOP");
    let thaw = Thaw(&instance);
    bed.publish(&[put("while-stopped", 2)]).await;
    let frozen = Instant::now();
    // Attempt limit: the longest round trip (the 3 s keepalive bound, over
    // the 2 s statement timeout and twice the 1 s connect timeout) + 10 s.
    let hung_at = wait_until(Duration::from_secs(40), "/healthz to fail", || async {
        (status(port, "/healthz").await == 503).then(|| frozen.elapsed())
    })
    .await;
    drop(thaw);
    assert!(
        hung_at >= Duration::from_secs(12),
        "a hang counts only after the attempt limit: {hung_at:?}"
    );
    bed.wait_committed(3, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "/healthz again", || async {
        (status(port, "/healthz").await == 200).then_some(())
    })
    .await;
    service.stop().await.expect("clean stop");
    eprintln!(
        "liveness: alive through a {:?} outage (stall timeout {stall:?}); a write hung on a \
         SIGSTOPped server failed /healthz after {hung_at:.1?}, alive again after SIGCONT",
        stall * 3
    );
}

/// Waits for readiness before a test goes on.
trait AwaitReady {
    async fn await_ready(self) -> Self;
}

impl AwaitReady for common::InProcess {
    async fn await_ready(self) -> Self {
        wait_ready(self.http_port).await;
        self
    }
}
