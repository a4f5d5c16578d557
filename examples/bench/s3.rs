//! The backfill benchmark's bucket: `s3-fill` creates it and puts small objects with one user
//! metadata entry each, `s3-drop` empties and deletes it. objmeta's own S3 client has no call
//! for either (it only lists and reads), so these two use a plain SDK client, built from the
//! same `--s3-*` settings (and `S3_*` variables) as objmeta's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use objmeta::s3::S3Config;

use crate::common::reporting;

/// How often a long S3 step prints a progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The S3 server and the bucket every S3-side subcommand works on.
#[derive(clap::Args, Clone)]
pub struct BucketArgs {
    #[command(flatten)]
    pub s3: S3Config,
    #[arg(long)]
    pub bucket: String,
}

/// The key of object `index`: a thousand objects per prefix, as buckets are usually laid out
/// (and so that a file-system store such as versitygw keeps its directories small).
pub fn object_key(index: u64) -> String {
    format!("bench/{:04}/{index:08}", index / 1000)
}

/// A plain SDK client (no objmeta code) on the endpoint of `config`, path-style.
fn sdk_client(config: &S3Config) -> anyhow::Result<aws_sdk_s3::Client> {
    let endpoint = config
        .s3_endpoint
        .as_deref()
        .context("--s3-endpoint (S3_ENDPOINT) is required")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let sdk_config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(config.s3_region.clone()))
        .credentials_provider(config.credentials()?)
        .force_path_style(!config.s3_virtual_hosted_style)
        .http_client(http)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(sdk_config))
}

#[derive(clap::Args)]
pub struct FillArgs {
    #[command(flatten)]
    target: BucketArgs,
    /// Objects to put.
    #[arg(long)]
    objects: u64,
    /// PUT requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// What the S3 server is, for the report (e.g. whether it keeps connections alive).
    #[arg(long, default_value = "")]
    server: String,
    /// The `phase` of the printed figures (the report's section).
    #[arg(long, default_value = "backfill_fill")]
    phase: String,
}

/// Creates the bucket (it must not exist yet) and puts `--objects` objects: the body is the
/// key, the user metadata one entry `x-amz-meta-index`.
pub async fn fill(args: FillArgs) -> anyhow::Result<Value> {
    let client = sdk_client(&args.target.s3)?;
    let bucket = args.target.bucket.as_str();
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket}"))?;
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let puts = stream::iter(0..args.objects)
        .map(|index| {
            let (client, done) = (&client, &done);
            async move {
                let key = object_key(index);
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .metadata("index", index.to_string())
                    .body(ByteStream::from(key.clone().into_bytes()))
                    .send()
                    .await
                    .with_context(|| format!("putting {bucket}/{key}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<()>();
    reporting(puts, PROGRESS_EVERY, || {
        let put = done.load(Ordering::Relaxed);
        eprintln!(
            "[s3-fill] {bucket}: {put}/{} objects put after {:.0} s",
            args.objects,
            started.elapsed().as_secs_f64()
        );
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[s3-fill] {bucket}: {} objects put in {seconds:.1} s",
        args.objects
    );
    Ok(json!({
        "phase": args.phase,
        "bucket": bucket,
        "server": args.server,
        "objects": args.objects,
        "concurrency": args.concurrency,
        "seconds": seconds,
        "objects_per_s": args.objects as f64 / seconds,
    }))
}

/// DeleteObjects requests in flight while a bucket is emptied.
const DELETE_CONCURRENCY: usize = 4;

/// Deletes every object of the bucket (DeleteObjects of up to 1000 keys, a few at once),
/// then the bucket; a bucket that does not exist is already gone.
pub async fn drop_bucket(args: BucketArgs) -> anyhow::Result<Value> {
    let client = sdk_client(&args.s3)?;
    let bucket = args.bucket.as_str();
    let started = Instant::now();
    let deleted = AtomicU64::new(0);
    let work = async {
        let Some(keys) = list_keys(&client, bucket).await? else {
            return anyhow::Ok(false);
        };
        stream::iter(keys.chunks(1000))
            .map(|chunk| {
                let (client, deleted) = (&client, &deleted);
                async move {
                    delete_objects(client, bucket, chunk).await?;
                    deleted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .with_context(|| format!("deleting bucket {bucket}"))?;
        Ok(true)
    };
    let existed = reporting(work, PROGRESS_EVERY, || {
        eprintln!(
            "[s3-drop] {bucket}: {} objects deleted after {:.0} s",
            deleted.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    })
    .await?;
    let deleted = deleted.load(Ordering::Relaxed);
    match existed {
        true => eprintln!(
            "[s3-drop] deleted bucket {bucket} and its {deleted} objects in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        false => eprintln!("[s3-drop] bucket {bucket} does not exist"),
    }
    Ok(json!({"bucket": bucket, "existed": existed, "deleted_objects": deleted}))
}

/// Every key of the bucket; `None` when there is no such bucket.
async fn list_keys(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_bucket()) => {
                return Ok(None);
            }
            other => other.with_context(|| format!("listing {bucket}"))?,
        };
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
    }
    Ok(Some(keys))
}

async fn delete_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    let objects = keys
        .iter()
        .map(|key| ObjectIdentifier::builder().key(key).build())
        .collect::<Result<Vec<_>, _>>()?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()?;
    let answer = client
        .delete_objects()
        .bucket(bucket)
        .delete(delete)
        .send()
        .await
        .with_context(|| format!("deleting objects of {bucket}"))?;
    match answer.errors().first() {
        Some(failed) => anyhow::bail!(
            "deleting {bucket}/{}: {}",
            failed.key().unwrap_or("?"),
            failed.message().unwrap_or("?")
        ),
        None => Ok(()),
    }
}
