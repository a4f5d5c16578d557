//! A bucket of its own on versitygw per test, set up with a plain SDK client (not objmeta's):
//! what a user's application would write, and the ground truth objmeta's table must mirror.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use futures::StreamExt;
use serde_json::Value;
use time::OffsetDateTime;

use super::{free_port, repo_root};

/// A live row or a bucket's object, as compared: ETag, size, user metadata.
pub type Seen = (Option<String>, Option<i64>, Value);

/// A plain SDK client on the tests' versitygw.
pub fn admin() -> aws_sdk_s3::Client {
    let s3 = super::s3();
    admin_at(&s3.endpoint, None)
}

/// A plain SDK client on an S3 endpoint, trusting `ca_pem` when given.
pub fn admin_at(endpoint: &str, ca_pem: Option<&[u8]>) -> aws_sdk_s3::Client {
    let s3 = super::s3();
    let mut tls = aws_smithy_http_client::tls::TlsContext::builder();
    if let Some(pem) = ca_pem {
        tls = tls.with_trust_store(
            aws_smithy_http_client::tls::TrustStore::empty().with_pem_certificate(pem.to_vec()),
        );
    }
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls.build().expect("TLS context"))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new(s3.region.clone()))
        .credentials_provider(Credentials::new(
            &s3.access_key,
            &s3.secret_key,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// What HeadObject says of an object, as objmeta stores it.
#[derive(Clone, Debug)]
pub struct Head {
    /// Without the quotes.
    pub etag: String,
    pub size: i64,
    pub last_modified: OffsetDateTime,
    /// `x-amz-meta-*`, names lower-cased, as a JSON object.
    pub user_metadata: Value,
}

pub struct Bucket {
    pub name: String,
    pub client: aws_sdk_s3::Client,
}

impl Bucket {
    /// A new, empty bucket named after `label`, unique to this run.
    pub async fn create(label: &str) -> Bucket {
        Bucket::create_with(label, admin()).await
    }

    pub async fn create_with(label: &str, client: aws_sdk_s3::Client) -> Bucket {
        let name = format!(
            "{label}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
        .to_lowercase();
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        Bucket { name, client }
    }

    /// Puts `key` with `body` and user metadata; returns what HeadObject then says.
    pub async fn put(&self, key: &str, body: &[u8], metadata: &[(&str, &str)]) -> Head {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body.to_vec()));
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        self.head(key).await.expect("the object just put")
    }

    /// Replaces the user metadata of `key` as S3 clients do: by copying the object onto
    /// itself with the `REPLACE` directive.
    pub async fn replace_metadata(&self, key: &str, metadata: &[(&str, &str)]) {
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.name)
            .key(key)
            .copy_source(format!("{}/{key}", self.name))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace);
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("copy {key} onto itself: {e:?}"));
    }

    /// Puts every object (key, user metadata) `concurrency` at a time; the body is the key.
    pub async fn fill(&self, objects: &[(String, Vec<(String, String)>)], concurrency: usize) {
        futures::stream::iter(objects)
            .map(|(key, metadata)| async move {
                let mut request = self
                    .client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(ByteStream::from(key.as_bytes().to_vec()));
                for (name, value) in metadata {
                    request = request.metadata(name, value);
                }
                request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            })
            .buffer_unordered(concurrency)
            .collect::<()>()
            .await;
    }

    pub async fn delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    }

    /// HeadObject; `None` for a missing object.
    pub async fn head(&self, key: &str) -> Option<Head> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(head) => head,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return None,
            Err(e) => panic!("head {key}: {e:?}"),
        };
        let last_modified = head.last_modified().expect("Last-Modified");
        let user_metadata: serde_json::Map<String, Value> = head
            .metadata()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.to_lowercase(), Value::from(v.as_str())))
            .collect();
        Some(Head {
            etag: head
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
            size: head.content_length().unwrap_or_default(),
            last_modified: OffsetDateTime::from_unix_timestamp(last_modified.secs())
                .expect("a time"),
            user_metadata: user_metadata.into(),
        })
    }

    /// What the bucket holds, read by the test's own client (list, then HEAD each).
    pub async fn truth(&self) -> BTreeMap<String, Seen> {
        let keys = self.keys().await;
        futures::stream::iter(keys)
            .map(|key| async move {
                let head = self.head(&key).await.expect("listed object exists");
                (key, (Some(head.etag), Some(head.size), head.user_metadata))
            })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// Every key, in listing order.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
        }
        keys
    }
}

/// A versitygw of this test alone (the shared one must not be stopped), on a free port and
/// a directory of its own, optionally serving TLS.
pub struct PrivateS3 {
    dir: tempfile::TempDir,
    port: u16,
    tls: Option<(PathBuf, PathBuf)>,
    /// More arguments of `versitygw` (before the backend), e.g. its Kafka events.
    extra: Vec<String>,
    /// Keeps object versions (the posix backend's `--versioning-dir`).
    versioning: bool,
    child: Option<Child>,
}

impl PrivateS3 {
    pub fn start(tls: Option<(PathBuf, PathBuf)>) -> PrivateS3 {
        PrivateS3::start_with(tls, &[])
    }

    pub fn start_with(tls: Option<(PathBuf, PathBuf)>, extra: &[&str]) -> PrivateS3 {
        super::s3(); // builds versitygw once, if needed
        let mut server = PrivateS3 {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            tls,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            versioning: false,
            child: None,
        };
        server.resume();
        server
    }

    /// A server whose buckets can keep versions (PutBucketVersioning).
    pub fn versioning() -> PrivateS3 {
        super::s3();
        let mut server = PrivateS3 {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            tls: None,
            extra: Vec::new(),
            versioning: true,
            child: None,
        };
        server.resume();
        server
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.port)
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let s3 = super::s3();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut command = Command::new(repo_root().join(".services/bin/versitygw"));
        command.args([
            "--port",
            &format!("127.0.0.1:{}", self.port),
            "--access",
            &s3.access_key,
            "--secret",
            &s3.secret_key,
            "--region",
            &s3.region,
        ]);
        if let Some((cert, key)) = &self.tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        command.args(&self.extra);
        let log = std::fs::File::create(self.dir.path().join("versitygw.log")).unwrap();
        command.arg("posix");
        if self.versioning {
            let versions = self.dir.path().join("versions");
            std::fs::create_dir_all(&versions).unwrap();
            command.arg("--versioning-dir").arg(versions);
        }
        command
            .arg(&data)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().expect("start versitygw"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "versitygw did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
