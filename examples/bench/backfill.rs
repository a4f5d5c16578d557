//! Runs `objmeta backfill` on the benchmark's bucket as a user would (the release binary, its
//! JSON summary on stdout) and measures it from outside: wall time from start to exit, peak
//! RSS (VmHWM, read like the catch-up's while the process runs), its CPU time, and the
//! cores PostgreSQL and the S3 server used meanwhile.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::common::{other_cores, status_kib, waited_children_cpu_seconds, Load};
use crate::s3::PROGRESS_EVERY;

#[derive(clap::Args)]
pub struct Args {
    /// The objmeta binary.
    #[arg(long)]
    objmeta: PathBuf,
    #[arg(long)]
    bucket: String,
    /// objmeta's `--concurrency` (HeadObject requests in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// objmeta's `--database-schema`.
    #[arg(long)]
    schema: String,
    /// The objects the bucket holds: the backfill must list and insert exactly these.
    #[arg(long)]
    objects: u64,
    /// PostgreSQL's postmaster (its whole process tree is counted).
    #[arg(long)]
    pg_pid: Option<u32>,
    /// The S3 server's process.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop objmeta (and fail) after this long.
    #[arg(long, default_value = "900s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let before = Load::sample(args.pg_pid, args.server_pid);
    let children_cpu = children_cpu_seconds()?;
    let started = Instant::now();
    // stderr (objmeta's progress lines and logs) goes where the bench's own goes.
    let mut child = Command::new(&args.objmeta)
        .args(["backfill", "--bucket", &args.bucket])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--database-schema", &args.schema])
        .args(["--progress", "lines", "--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args.objmeta.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("objmeta's stdout")?;
    let summary = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let (mut hwm, mut peak_rss, mut reported) = (0u64, 0u64, Instant::now());
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // VmHWM is the kernel's own peak: a sample misses at most the growth of the last
        // interval before exit.
        hwm = hwm.max(status_kib(pid, "VmHWM").unwrap_or(0));
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS").unwrap_or(0));
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            eprintln!(
                "[backfill] {:.0} s, objmeta RSS peak {} MiB",
                started.elapsed().as_secs_f64(),
                hwm / 1024
            );
        }
        if started.elapsed() > args.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("objmeta backfill did not finish within {:?}", args.timeout);
        }
        tokio::time::sleep(args.interval).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let load = before.until(&Load::sample(args.pg_pid, args.server_pid), seconds);
    let cpu = children_cpu_seconds()? - children_cpu;
    let stdout = summary
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading objmeta's stdout panicked"))?
        .context("reading objmeta's stdout")?;
    if !status.success() {
        bail!("objmeta backfill exited with {status}; its summary: {stdout}");
    }
    let summary: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("objmeta backfill printed no JSON summary: {stdout:?}"))?;
    let listed = summary["listed"].as_u64().unwrap_or(0);
    let inserted = summary["inserted"].as_u64().unwrap_or(0);
    if listed != args.objects || inserted != args.objects {
        bail!(
            "objmeta backfill listed {listed} and inserted {inserted} objects, expected {}: {summary}",
            args.objects
        );
    }
    Ok(json!({
        "phase": "backfill",
        "bucket": args.bucket,
        "objects": listed,
        "concurrency": args.concurrency,
        "seconds": seconds,
        "objects_per_s": listed as f64 / seconds,
        "objmeta_seconds": summary["seconds"],
        "peak_rss_kib": hwm,
        "peak_rss_sampled_kib": peak_rss,
        "cpu_seconds": cpu,
        "cpu_seconds_per_10k": cpu * 10_000.0 / listed.max(1) as f64,
        "pg_cores": load.pg_cores,
        "server_cores": load.service_cores,
        "machine_busy_percent": load.machine_busy_percent,
        "other_cores": other_cores(&load, cpu / seconds),
        "interrupt_cores": load.interrupt_cores,
        "summary": summary,
    }))
}

/// CPU time of this process's children that were waited for (objmeta, once it exited).
fn children_cpu_seconds() -> anyhow::Result<f64> {
    waited_children_cpu_seconds().context("reading /proc/self/stat")
}
