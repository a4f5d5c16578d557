//! The service around the pipeline: migrations under concurrency, the HTTP
//! endpoints, start-up failures that must say what to fix.

mod common;

use std::time::Duration;

use common::{http_get, minio_message, wait_until, TestBed};
use objmeta::error::Error;

fn database_config(bed: &TestBed) -> objmeta::config::DatabaseConfig {
    bed.run_config(0, &[]).database
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_once() {
    let bed = TestBed::new("migrate", 1).await;
    let config = database_config(&bed);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { objmeta::migrate(&config).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run.await.unwrap().expect("migration succeeds");
    }
    // Every file of sql/ is a migration, embedded in the binary.
    let migrations = std::fs::read_dir(common::repo_root().join("sql"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    assert!(migrations >= 2, "sql/ holds the migrations");
    assert_eq!(
        applied, migrations,
        "each migration is applied by exactly one replica"
    );
    let db = bed.db().await;
    let versions: i64 = db
        .query_one("SELECT count(*) FROM objmeta_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, migrations as i64);
    assert_eq!(
        objmeta::migrate(&config).await.unwrap(),
        0,
        "re-running is a no-op"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_health_readiness_and_metrics() {
    let bed = TestBed::new("endpoints", 2).await;
    let (key, payload) = minio_message(
        "s3:ObjectCreated:Put",
        "b",
        "k.txt",
        1_764_000_000_000_000_000,
        None,
        &[("X-Amz-Meta-Id", "1")],
    );
    bed.publish(&[(key, payload)]).await;
    bed.publish_raw(0, None, Some(b"garbage")).await;
    let service = bed.start(&[]);
    wait_until(Duration::from_secs(60), "readiness", || async {
        let (status, _) = http_get(service.http_port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    bed.wait_committed(2, Duration::from_secs(60)).await;
    let (status, _) = http_get(service.http_port, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = http_get(service.http_port, "/nope").await.unwrap();
    assert_eq!(status, 404);
    // The committer thread counts a commit once the broker confirmed it,
    // which is just after the offsets the wait above saw: wait for it.
    let commits = r#"objmeta_offset_commits_total{result="ok"}"#;
    wait_until(Duration::from_secs(30), "a counted commit", || async {
        let ok = TestBed::metric(service.http_port, commits).await?;
        (ok >= 1.0).then_some(())
    })
    .await;
    let (status, body) = http_get(service.http_port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    // Exact values of whole series: a substring `… 1` would also match 10.
    for (series, value) in [
        (
            r#"objmeta_events_consumed_total{family="created",outcome="written"}"#,
            1.0,
        ),
        (r#"objmeta_rows_written_total{result="upserted"}"#, 1.0),
        (r#"objmeta_dead_letters_total{reason="invalid_json"}"#, 1.0),
        ("objmeta_assigned_partitions", 2.0),
    ] {
        let got = TestBed::metric(service.http_port, series).await;
        assert_eq!(got, Some(value), "{series}:\n{body}");
    }
    // One batch or two, depending on when the two messages arrived.
    let batches = TestBed::metric(service.http_port, "objmeta_batch_rows_count").await;
    assert!(
        batches.is_some_and(|n| (1.0..=2.0).contains(&n)),
        "{batches:?}"
    );
    assert!(
        body.contains("objmeta_flush_duration_seconds_bucket"),
        "{body}"
    );
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_fatal_and_says_so() {
    let bed = TestBed::new("badauth", 1).await;
    // The test cluster trusts every local user; a role that does not exist
    // is refused all the same, which is the fatal class of error.
    let url = bed
        .services
        .database_url
        .replace("postgres@", "nobody_here:secret@");
    let config = bed.run_config_at(&url, "127.0.0.1:0", &[]);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        objmeta::run(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("a fatal database error ends run() promptly");
    let error = result.expect_err("refused role");
    assert!(matches!(error, Error::Database(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("nobody_here"),
        "the message names the problem: {text}"
    );
    assert!(!text.contains("secret"), "no password in errors: {text}");
}

/// `/healthz` answers 200 every 250 ms for `period`, and `/readyz` 503.
async fn live_but_not_ready_for(port: u16, period: Duration) {
    let until = std::time::Instant::now() + period;
    // The server comes up first; a refused connection is not an answer.
    wait_until(Duration::from_secs(10), "the HTTP server", || async {
        http_get(port, "/healthz").await.map(|_| ())
    })
    .await;
    while std::time::Instant::now() < until {
        let (live, _) = http_get(port, "/healthz").await.expect("/healthz answers");
        assert_eq!(live, 200, "a replica waiting at start-up was reported dead");
        let (ready, _) = http_get(port, "/readyz").await.expect("/readyz answers");
        assert_eq!(ready, 503, "ready before its migrations ran");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A liveness probe must not restart a replica whose start-up migrations
/// wait: here for a lock another session holds (as while another replica
/// migrates a big table) for longer than the stall timeout, then for a
/// database that does not answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_start_up_migrations_stay_live() {
    let bed = TestBed::new("startup_live", 1).await;
    objmeta::migrate(&database_config(&bed)).await.unwrap();
    let mut locker = bed.db().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE objmeta_migrations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let quick = ["--health-stall-timeout", "2s", "--retry-max-backoff", "1s"];
    let service = bed.start(&quick);
    live_but_not_ready_for(service.http_port, Duration::from_secs(6)).await;
    lock.rollback().await.unwrap();
    wait_until(Duration::from_secs(60), "readiness", || async {
        let (status, _) = http_get(service.http_port, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    service.stop().await.unwrap();

    let http_port = common::free_port();
    let nobody = format!(
        "postgres://objmeta@127.0.0.1:{}/objmeta",
        common::free_port()
    );
    let http_addr = format!("127.0.0.1:{http_port}");
    let mut extra = vec!["--database-connect-timeout", "1s"];
    extra.extend_from_slice(&quick);
    let config = bed.run_config_at(&nobody, &http_addr, &extra);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(objmeta::run(config, shutdown.clone()));
    live_but_not_ready_for(http_port, Duration::from_secs(6)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
