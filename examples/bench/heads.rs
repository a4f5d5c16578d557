//! The reference of the backfill benchmark: a bare concurrent HeadObject loop with objmeta's
//! own S3 client (`S3::list_page` to list every key, then `S3::head` on each of them through
//! `buffer_unordered(--concurrency)`), nothing written anywhere. objmeta's backfill does the
//! same reads with the same client, so the gap between the two rates is what its listing
//! window, bookkeeping and database writes cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use objmeta::s3::S3;

use crate::common::{cpu_seconds, other_cores, reporting, Load};
use crate::s3::{BucketArgs, PROGRESS_EVERY};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: BucketArgs,
    /// HeadObject requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Names this run in the report (e.g. before, after).
    #[arg(long, default_value = "heads")]
    label: String,
    /// The `phase` of the printed figures (the report's section: the backfill's, or the
    /// enrichment's).
    #[arg(long, default_value = "backfill_heads")]
    phase: String,
    /// The S3 server's process, whose CPU is reported.
    #[arg(long)]
    server_pid: Option<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let s3 = S3::new(&args.target.s3).context("objmeta's S3 client")?;
    let bucket = args.target.bucket.as_str();
    let label = args.label.as_str();
    let listing = Instant::now();
    let keys = reporting(list_all(&s3, bucket), PROGRESS_EVERY, || {
        eprintln!(
            "[s3-heads] {label}: listing {bucket}, {:.0} s so far",
            listing.elapsed().as_secs_f64()
        );
    })
    .await?;
    let list_seconds = listing.elapsed().as_secs_f64();
    let objects = keys.len() as u64;
    eprintln!("[s3-heads] {label}: listed {objects} keys in {list_seconds:.1} s");
    let (found, missing, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let first_error = std::sync::Mutex::new(None::<String>);
    let before = Load::sample(None, args.server_pid);
    let cpu_before = own_cpu_seconds()?;
    let started = Instant::now();
    let heads = stream::iter(&keys)
        .map(|key| s3.head(bucket, key))
        .buffer_unordered(args.concurrency.max(1))
        .for_each(|read| {
            match read {
                Ok(Some(_)) => found.fetch_add(1, Ordering::Relaxed),
                Ok(None) => missing.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert_with(|| e.to_string());
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            async {}
        });
    reporting(heads, PROGRESS_EVERY, || {
        eprintln!(
            "[s3-heads] {label}: {}/{objects} HEADs done after {:.0} s",
            found.load(Ordering::Relaxed) + missing.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let load = before.until(&Load::sample(None, args.server_pid), seconds);
    let cpu = own_cpu_seconds()? - cpu_before;
    let (found, missing, failed) = (
        found.into_inner(),
        missing.into_inner(),
        failed.into_inner(),
    );
    if failed > 0 || missing > 0 {
        bail!(
            "{failed} HEADs failed and {missing} objects were missing of {objects} (first error: {})",
            first_error
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| "none".into())
        );
    }
    eprintln!(
        "[s3-heads] {label}: {found} HEADs in {seconds:.1} s = {:.0} objects/s",
        found as f64 / seconds
    );
    Ok(json!({
        "phase": args.phase,
        "label": label,
        "bucket": bucket,
        "objects": objects,
        "concurrency": args.concurrency,
        "list_seconds": list_seconds,
        "seconds": seconds,
        "objects_per_s": objects as f64 / seconds,
        "list_and_heads_per_s": objects as f64 / (list_seconds + seconds),
        "cpu_seconds": cpu,
        "cpu_seconds_per_10k": cpu * 10_000.0 / objects.max(1) as f64,
        "server_cores": load.service_cores,
        "machine_busy_percent": load.machine_busy_percent,
        "other_cores": other_cores(&load, cpu / seconds),
        "interrupt_cores": load.interrupt_cores,
    }))
}

/// This process's CPU time: the client's cost of the HEADs, to compare with objmeta's.
fn own_cpu_seconds() -> anyhow::Result<f64> {
    cpu_seconds(std::process::id(), false).context("reading /proc/self/stat")
}

/// Every key of the bucket, in listing order, with objmeta's ListObjectsV2 pages.
async fn list_all(s3: &S3, bucket: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let page = s3
            .list_page(bucket, "", None, continuation.as_deref(), false)
            .await
            .with_context(|| format!("listing {bucket}"))?;
        keys.extend(page.objects.into_iter().map(|listed| listed.key));
        match page.next {
            Some(next) => continuation = Some(next),
            None => return Ok(keys),
        }
    }
}
