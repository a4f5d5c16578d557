//! Backfill and reconcile when things go wrong or run for a long time, on real servers:
//! - a private versitygw stopped in the middle of a backfill: retries, then a clear non-zero
//!   exit with counts, and nothing written is wrong;
//! - versitygw serving TLS with a private CA: trusted through `--s3-ca-file`, refused
//!   without it; `--restart` starts an interrupted listing over;
//! - periodic reconcile in two replicas of `objmeta run`: one reconciles at a time (its
//!   advisory lock on a connection of its own), consumption goes on, and the drift metrics
//!   show the last run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use common::bucket::{admin_at, Bucket, PrivateS3};
use common::{minio_message, wait_until, TestBed};
use objmeta::config::ListingConfig;
use objmeta::listing::{Kind, Summary};

async fn etags(bed: &TestBed, bucket: &str) -> BTreeMap<String, String> {
    bed.db()
        .await
        .query(
            "SELECT key, etag FROM current_objects WHERE bucket = $1",
            &[&bucket],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn bucket_etags(bucket: &Bucket) -> BTreeMap<String, String> {
    let keys = bucket.keys().await;
    futures::stream::iter(keys)
        .map(|key| async move {
            let head = bucket.head(&key).await.expect("exists");
            (key, head.etag)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn objects(count: usize) -> Vec<(String, Vec<(String, String)>)> {
    (0..count)
        .map(|i| {
            (
                format!("obj/{i:05}"),
                vec![("n".to_string(), i.to_string())],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_mid_backfill_gives_retries_then_a_clear_failure() {
    let bed = TestBed::new("backfill_outage", 1).await;
    objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .expect("migrations");
    let mut server = PrivateS3::start(None);
    let bucket = Bucket::create_with("outage", admin_at(&server.endpoint(), None)).await;
    bucket.fill(&objects(1200), 32).await;
    let truth = bucket_etags(&bucket).await;

    let config = bed.listing_config(
        "backfill",
        &server.endpoint(),
        &bucket.name,
        &[
            "--concurrency",
            "1",
            "--batch-rows",
            "20",
            "--s3-retry-timeout",
            "3s",
            "--s3-request-timeout",
            "2s",
        ],
    );
    let backfill = tokio::spawn(async move { common::run_listing(Kind::Backfill, &config).await });
    wait_until(Duration::from_secs(60), "some rows written", || async {
        (etags(&bed, &bucket.name).await.len() >= 100).then_some(())
    })
    .await;
    server.stop();
    let summary = tokio::time::timeout(Duration::from_secs(60), backfill)
        .await
        .expect("the backfill gives up within its retry timeout")
        .unwrap();
    assert!(!summary.succeeded());
    assert!(!summary.complete);
    assert!(summary.retries > 0, "{summary:?}");
    let reason = summary.stopped.clone().expect("a reason");
    assert!(
        reason.contains(&bucket.name) || reason.to_lowercase().contains("s3"),
        "{reason}"
    );
    let written = etags(&bed, &bucket.name).await;
    assert!(written.len() < truth.len());
    for (key, etag) in &written {
        assert_eq!(
            Some(etag),
            truth.get(key),
            "{key}: nothing written is wrong"
        );
    }
    assert_eq!(
        summary.tally.inserted,
        written.len() as u64,
        "the summary counts what was written"
    );

    // The server back: the rerun resumes and completes.
    server.resume();
    let config = bed.listing_config("backfill", &server.endpoint(), &bucket.name, &[]);
    let resumed = common::run_listing(Kind::Backfill, &config).await;
    assert!(resumed.succeeded() && resumed.resumed, "{resumed:?}");
    assert_eq!(etags(&bed, &bucket.name).await, truth);
}

/// A CA and a certificate for `localhost` signed by it, made with the openssl command.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=objmeta test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_restart() {
    let bed = TestBed::new("backfill_tls", 1).await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(certs.path());
    let server = PrivateS3::start(Some((cert, key)));
    let pem = std::fs::read(&ca).unwrap();
    let bucket = Bucket::create_with("tls", admin_at(&server.endpoint(), Some(&pem))).await;
    bucket.fill(&objects(300), 16).await;
    let ca_file = ca.to_str().unwrap();

    // Without the CA the server's certificate is refused, clearly.
    let untrusted = bed.listing_config(
        "backfill",
        &server.endpoint(),
        &bucket.name,
        &["--s3-retry-timeout", "1s"],
    );
    let refused = common::run_listing(Kind::Backfill, &untrusted).await;
    assert!(!refused.succeeded());
    let reason = refused.stopped.clone().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("tls"),
        "{reason}"
    );
    assert_eq!(refused.tally.inserted, 0);

    let trusted = bed.listing_config(
        "backfill",
        &server.endpoint(),
        &bucket.name,
        &["--s3-ca-file", ca_file],
    );
    let first = common::run_listing(Kind::Backfill, &trusted).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!((first.tally.listed, first.tally.inserted), (300, 300));
    assert_eq!(etags(&bed, &bucket.name).await, bucket_etags(&bucket).await);

    // A reconcile interrupted in the middle resumes from its checkpoint (and removes nothing
    // it listed before the interruption); interrupted again, `--restart` starts it over.
    let reconcile = |extra: &[&str]| {
        let mut args = vec!["--s3-ca-file", ca_file];
        args.extend_from_slice(extra);
        bed.listing_config("reconcile", &server.endpoint(), &bucket.name, &args)
    };
    let stopped = interrupt(
        &bed,
        reconcile(&["--concurrency", "1", "--batch-rows", "5"]),
    )
    .await;
    assert!(!stopped.complete && stopped.tally.listed > 0, "{stopped:?}");
    let resumed = common::run_listing(Kind::Reconcile, &reconcile(&[])).await;
    assert!(resumed.succeeded() && resumed.resumed, "{resumed:?}");
    assert!(resumed.resumed_after.is_some(), "{resumed:?}");
    assert_eq!(
        resumed.tally.listed, 300,
        "the tally covers both runs: {resumed:?}"
    );
    assert_eq!(
        (
            resumed.removed,
            resumed.tally.inserted,
            resumed.tally.updated
        ),
        (0, 0, 0),
        "{resumed:?}"
    );
    assert_eq!(etags(&bed, &bucket.name).await.len(), 300);
    interrupt(
        &bed,
        reconcile(&["--concurrency", "1", "--batch-rows", "5"]),
    )
    .await;
    let restarted = common::run_listing(Kind::Reconcile, &reconcile(&["--restart"])).await;
    assert!(restarted.succeeded() && !restarted.resumed, "{restarted:?}");
    assert_eq!(
        (restarted.tally.listed, restarted.tally.unchanged),
        (300, 300),
        "{restarted:?}"
    );
}

/// Runs the listing until it has a checkpoint, then stops it as SIGINT would.
async fn interrupt(bed: &TestBed, config: ListingConfig) -> Summary {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let listing = tokio::spawn(async move {
        objmeta::read_buckets(Kind::Reconcile, &config, stop)
            .await
            .expect("runs")
            .remove(0)
    });
    wait_until(Duration::from_secs(60), "a checkpoint", || async {
        bed.db()
            .await
            .query_opt(
                "SELECT 1 FROM bucket_listings WHERE position IS NOT NULL",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    shutdown.cancel();
    let summary = listing.await.unwrap();
    println!("interrupted: {summary:?}");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_reconcile_runs_on_one_replica_at_a_time_beside_consumption() {
    let bed = TestBed::new("reconcile_periodic", 2).await;
    let s3 = common::s3();
    let bucket = Bucket::create("periodic").await;
    bucket.fill(&objects(600), 32).await;
    let extra = [
        "--reconcile-every",
        "2s",
        "--reconcile-bucket",
        &bucket.name,
        "--reconcile-concurrency",
        "2",
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-access-key",
        &s3.access_key,
        "--s3-secret-key",
        &s3.secret_key,
    ];
    let first = bed.start(&extra);
    let second = bed.start(&extra);

    // Consumption goes on while a reconcile runs.
    let mut sent = 0i64;
    for round in 0..6u64 {
        let messages: Vec<(String, Vec<u8>)> = (0..50u64)
            .map(|i| {
                minio_message(
                    "s3:ObjectCreated:Put",
                    "events",
                    &format!("e/{round}/{i}"),
                    1_700_000_000_000_000_000 + round * 1000 + i,
                    None,
                    &[],
                )
            })
            .collect();
        bed.publish(&messages).await;
        sent += messages.len() as i64;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bed.wait_committed(sent, Duration::from_secs(60)).await;

    let runs: Vec<(time::OffsetDateTime, time::OffsetDateTime)> =
        wait_until(Duration::from_secs(90), "three finished reconciles", || async {
            let rows = bed
                .db()
                .await
                .query(
                    "SELECT started_at, finished_at FROM reconcile_runs WHERE bucket = $1 ORDER BY started_at",
                    &[&bucket.name],
                )
                .await
                .ok()?;
            let runs: Vec<_> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (runs.len() >= 3).then_some(runs)
        })
        .await;
    for pair in runs.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "reconciles overlapped: {runs:?}");
    }

    // The drift of the last run, on both replicas' /metrics.
    let listed = format!(
        r#"objmeta_reconcile_listed_objects{{bucket="{}",prefix=""}}"#,
        bucket.name
    );
    for replica in [&first, &second] {
        let value = wait_until(Duration::from_secs(40), "drift metrics", || async {
            TestBed::metric(replica.http_port, &listed).await
        })
        .await;
        assert_eq!(value, 600.0);
    }
    // Each replica counts the reconciles it ran, just after recording them.
    let ok = r#"objmeta_reconcile_runs_total{result="ok"}"#;
    wait_until(
        Duration::from_secs(10),
        "every reconcile counted",
        || async {
            let mut done = 0.0;
            for replica in [&first, &second] {
                done += TestBed::metric(replica.http_port, ok).await.unwrap_or(0.0);
            }
            (done >= runs.len() as f64).then_some(())
        },
    )
    .await;
    first.stop().await.expect("first stops");
    second.stop().await.expect("second stops");
}
