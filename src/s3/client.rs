//! The S3 client: the SDK configured for one endpoint, and the two requests objmeta makes.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_s3::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::EncodingType;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{
    listing, ListPage, ListedVersion, ObjectRead, S3Config, S3Error, S3Request, VersionsPage,
};
use crate::batch::NULL_VERSION;
use crate::event::{query_unescape, split_entries, unquote_etag, NulInMetadata};

/// The most keys one ListObjectsV2 page holds (the S3 limit, and its default).
const MAX_KEYS: i32 = 1000;

/// Longest wait for a TCP (and TLS) connection, within the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one S3 endpoint; cheap to clone (clones share connections).
#[derive(Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
    max_keys: i32,
}

/// The SDK client's own Debug prints its whole configuration (kilobytes).
impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl S3 {
    /// Checks `config` (see [`S3Config::validate`]) and reads its CA file; connects lazily.
    pub fn new(config: &S3Config) -> Result<S3, S3Error> {
        config.validate()?;
        let tls = TlsContext::builder()
            .with_trust_store(trust_store(config.s3_ca_file.as_deref())?)
            .build()
            .map_err(|e| S3Error::Config(format!("TLS settings: {e}")))?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls)
            .build_https();
        let timeout = config.s3_request_timeout;
        let sdk_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(config.endpoint()?)
            .region(Region::new(config.s3_region.clone()))
            .credentials_provider(config.credentials()?)
            .force_path_style(!config.s3_virtual_hosted_style)
            .http_client(http_client)
            // One attempt per call: the caller retries with its own backoff and counts retries.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT.min(timeout))
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .build();
        Ok(S3 {
            client: aws_sdk_s3::Client::from_conf(sdk_config),
            max_keys: MAX_KEYS,
        })
    }

    /// Pages of at most `max_keys` keys (clamped to 1..=1000) instead of 1000, e.g. for tests
    /// that page through a few objects.
    pub fn with_max_keys(mut self, max_keys: i32) -> S3 {
        self.max_keys = max_keys.clamp(1, MAX_KEYS);
        self
    }

    /// One ListObjectsV2 page of the keys under `prefix`, in key order: after `start_after`
    /// (to resume a listing) or from `continuation` (the previous page's `next`).
    ///
    /// Asks for `encoding-type=url`, so that any key survives XML, and decodes the keys only
    /// when the response says they are encoded. With `with_metadata`, also asks for MinIO's
    /// `metadata=true`: objects whose entry carries their metadata come back with `read` set.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        continuation: Option<&str>,
        with_metadata: bool,
    ) -> Result<ListPage, S3Error> {
        let request = S3Request::List {
            bucket: bucket.to_string(),
        };
        let raw = RawListing::new(with_metadata);
        let body = Arc::clone(&raw.body);
        self.client
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_string()))
            .set_start_after(start_after.map(str::to_string))
            .set_continuation_token(continuation.map(str::to_string))
            .max_keys(self.max_keys)
            .encoding_type(EncodingType::Url)
            .customize()
            .interceptor(raw)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(request.clone(), e))?;
        let body = body.get().ok_or_else(|| S3Error::InvalidResponse {
            request: request.clone(),
            detail: "the listing's body was not kept".to_string(),
        })?;
        listing::parse(body).map_err(|detail| S3Error::InvalidResponse { request, detail })
    }

    /// Whether the bucket keeps versions: its versioning is `Enabled`, or `Suspended` (the
    /// versions made while it was enabled are still there).
    pub async fn versioned(&self, bucket: &str) -> Result<bool, S3Error> {
        let request = S3Request::Versioning {
            bucket: bucket.to_string(),
        };
        let output = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(request, e))?;
        Ok(output.status().is_some())
    }

    /// One page of ListObjectVersions after `marker` (key and version id markers): every
    /// version and delete marker, keys decoded when the response says they are encoded.
    pub async fn list_versions_page(
        &self,
        bucket: &str,
        prefix: &str,
        marker: Option<&(String, String)>,
    ) -> Result<VersionsPage, S3Error> {
        let request = S3Request::ListVersions {
            bucket: bucket.to_string(),
        };
        let output = self
            .client
            .list_object_versions()
            .bucket(bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_string()))
            .set_key_marker(marker.map(|(key, _)| key.clone()))
            .set_version_id_marker(marker.map(|(_, version)| version.clone()))
            .max_keys(self.max_keys)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(request.clone(), e))?;
        versions_page(&output).map_err(|detail| S3Error::InvalidResponse { request, detail })
    }

    /// HeadObject of one version: its state, or `Ok(None)` when it is gone (404).
    pub async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<Option<ObjectRead>, S3Error> {
        self.head_object(bucket, key, Some(version_id)).await
    }

    /// HeadObject: the object's current state, or `Ok(None)` when it does not exist (404).
    ///
    /// A HEAD of a bucket that does not exist is a 404 too, and a HEAD response has no body
    /// to tell the two apart: a caller that removes rows on `None` should have listed the
    /// bucket first (a listing reports `NoSuchBucket`).
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectRead>, S3Error> {
        self.head_object(bucket, key, None).await
    }

    /// HeadObject of `version_id`, or of the current version.
    async fn head_object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<ObjectRead>, S3Error> {
        let request = S3Request::Head {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let output = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await;
        match output {
            Ok(head) => object_read(&head)
                .map(Some)
                .map_err(|detail| S3Error::InvalidResponse { request, detail }),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(S3Error::from_sdk(request, e)),
        }
    }
}

/// A ListObjectVersions answer as objmeta reads it.
fn versions_page(output: &ListObjectVersionsOutput) -> Result<VersionsPage, String> {
    let url_encoded = output
        .encoding_type()
        .is_some_and(|encoding| *encoding == EncodingType::Url);
    let decode = |key: Option<&str>| -> Result<String, String> {
        let key = key.ok_or("a version without <Key>")?;
        match url_encoded {
            true => query_unescape(key).map_err(|e| format!("key {key:?}: {e}")),
            false => Ok(key.to_string()),
        }
    };
    let time = |at: Option<&DateTime>| -> Result<OffsetDateTime, String> {
        let at = at.ok_or("a version without <LastModified>")?;
        OffsetDateTime::from_unix_timestamp_nanos(at.as_nanos())
            .map_err(|e| format!("<LastModified> {at}: {e}"))
    };
    let mut versions = Vec::new();
    for version in output.versions() {
        versions.push(ListedVersion {
            key: decode(version.key())?,
            version_id: version.version_id().unwrap_or(NULL_VERSION).to_string(),
            latest: version.is_latest().unwrap_or(false),
            delete_marker: false,
            last_modified: time(version.last_modified())?,
        });
    }
    for marker in output.delete_markers() {
        versions.push(ListedVersion {
            key: decode(marker.key())?,
            version_id: marker.version_id().unwrap_or(NULL_VERSION).to_string(),
            latest: marker.is_latest().unwrap_or(false),
            delete_marker: true,
            last_modified: time(marker.last_modified())?,
        });
    }
    let next = match output.is_truncated() {
        Some(true) => Some((
            decode(output.next_key_marker())?,
            output
                .next_version_id_marker()
                .ok_or("<IsTruncated> is true but <NextVersionIdMarker> is missing")?
                .to_string(),
        )),
        _ => None,
    };
    Ok(VersionsPage { versions, next })
}

/// The trust store for HTTPS: the system's roots, or exactly the CA certificates of
/// `ca_file`. The file is checked here with the parser the HTTP client uses, which would
/// panic on a bad certificate at the first connection instead.
fn trust_store(ca_file: Option<&Path>) -> Result<TrustStore, S3Error> {
    let Some(path) = ca_file else {
        return Ok(TrustStore::default());
    };
    let refuse = |problem: String| {
        S3Error::Config(format!(
            "--s3-ca-file (S3_CA_FILE) {}: {problem}",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(format!("is not a PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(refuse(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| refuse(format!("holds a certificate that cannot be a CA: {e}")))?;
    }
    Ok(TrustStore::empty().with_pem_certificate(pem))
}

/// Adds MinIO's `metadata=true` to a ListObjectsV2 request, before it is signed (the query
/// is part of the signature), and keeps the response body for [`listing::parse`].
///
/// The SDK still sends the request (signing, endpoint, timeouts, error responses), but its
/// parsed output has no field for MinIO's `<UserMetadata>`; the body it read is at hand
/// after deserialization. Signing and sending the request by hand instead would repeat all
/// of that for one query parameter.
struct RawListing {
    metadata: bool,
    /// Set once: the SDK makes a single attempt (retries are off).
    body: Arc<OnceLock<Vec<u8>>>,
}

impl RawListing {
    fn new(metadata: bool) -> Self {
        RawListing {
            metadata,
            body: Arc::new(OnceLock::new()),
        }
    }
}

impl std::fmt::Debug for RawListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawListing")
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Intercept for RawListing {
    fn name(&self) -> &'static str {
        "objmeta::s3::RawListing"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.metadata {
            let request = context.request_mut();
            let separator = if request.uri().contains('?') {
                '&'
            } else {
                '?'
            };
            let uri = format!("{}{separator}metadata=true", request.uri());
            request.set_uri(uri)?;
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(bytes) = context.response().body().bytes() {
            // A second attempt cannot happen (retries are off); keeping the first is harmless.
            let _ = self.body.set(bytes.to_vec());
        }
        Ok(())
    }
}

/// System entries a HEAD returns as headers of their own; MinIO's `userMetadata` holds
/// them under the same (lower-case) names.
fn system_entries(head: &HeadObjectOutput) -> impl Iterator<Item = (&str, &str)> {
    [
        ("content-type", head.content_type()),
        ("cache-control", head.cache_control()),
        ("content-encoding", head.content_encoding()),
        ("content-disposition", head.content_disposition()),
        ("content-language", head.content_language()),
        ("expires", head.expires_string()),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
}

/// What a HEAD says about the object; its metadata goes through the rule MinIO events use.
fn object_read(head: &HeadObjectOutput) -> Result<ObjectRead, String> {
    let last_modified = head
        .last_modified()
        .ok_or("the HEAD response has no Last-Modified")?;
    let last_modified = OffsetDateTime::from_unix_timestamp_nanos(last_modified.as_nanos())
        .map_err(|e| format!("Last-Modified {last_modified}: {e}"))?;
    // The SDK strips `x-amz-meta-`; put it back so that the shared rule sees what MinIO stores.
    let user: Vec<(String, &str)> = head
        .metadata()
        .into_iter()
        .flatten()
        .map(|(key, value)| (format!("x-amz-meta-{key}"), value.as_str()))
        .collect();
    let entries = user
        .iter()
        .map(|(key, value)| (key.as_str(), *value))
        .chain(system_entries(head));
    let (user_metadata, system_metadata) = split_entries(entries)
        .map_err(|NulInMetadata { key }| format!("metadata entry {key:?} holds a NUL character"))?;
    Ok(ObjectRead {
        etag: head.e_tag().and_then(unquote_etag),
        size: head.content_length(),
        last_modified,
        version_id: head
            .version_id()
            .filter(|version| !version.is_empty() && *version != "null")
            .map(str::to_string),
        content_type: head.content_type().map(str::to_string),
        user_metadata,
        system_metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::primitives::DateTime;
    use serde_json::json;

    #[test]
    fn a_head_reads_like_a_minio_event_of_the_same_object() {
        let head = HeadObjectOutput::builder()
            .e_tag("\"d41d8cd98f00b204e9800998ecf8427e\"")
            .content_length(42)
            .last_modified(DateTime::from_secs(1_768_471_200))
            .version_id("null")
            .content_type("text/plain")
            .cache_control("max-age=60")
            .metadata("id", "1843")
            .metadata("api-url", "https://example.com/a?b=1&c=2")
            .build();
        let read = object_read(&head).unwrap();
        assert_eq!(
            read.etag.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(read.size, Some(42));
        assert_eq!(read.last_modified.unix_timestamp(), 1_768_471_200);
        assert_eq!(read.version_id, None);
        assert_eq!(read.content_type.as_deref(), Some("text/plain"));
        // What event::parse makes of `"X-Amz-Meta-Id":"1843"` in a MinIO event.
        assert_eq!(
            read.user_metadata.to_value(),
            json!({"api-url": "https://example.com/a?b=1&c=2", "id": "1843"})
        );
        assert_eq!(
            read.system_metadata.to_value(),
            json!({"cache-control": "max-age=60", "content-type": "text/plain"})
        );
    }

    #[test]
    fn a_head_keeps_a_real_version_id() {
        let head = HeadObjectOutput::builder()
            .last_modified(DateTime::from_secs(0))
            .version_id("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
            .build();
        let read = object_read(&head).unwrap();
        assert_eq!(
            read.version_id.as_deref(),
            Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
        );
        assert!(read.user_metadata.is_empty() && read.system_metadata.is_empty());
        assert_eq!((read.etag, read.size), (None, None));
    }

    #[test]
    fn a_head_without_last_modified_is_refused() {
        let error = object_read(&HeadObjectOutput::builder().build()).unwrap_err();
        assert!(error.contains("Last-Modified"), "{error}");
    }

    fn ca_file_error(content: &[u8]) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        let error = trust_store(Some(file.path())).map(|_| ()).unwrap_err();
        let shown = error.to_string();
        assert!(shown.contains("S3_CA_FILE"), "{shown}");
        assert!(
            shown.contains(&file.path().display().to_string()),
            "{shown}"
        );
        assert_eq!(error.kind_label(), "config");
        shown
    }

    #[test]
    fn a_bad_ca_file_is_a_configuration_error_naming_the_file() {
        assert!(ca_file_error(b"not a certificate").contains("no PEM certificate"));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_file_error(garbage).contains("cannot be a CA"));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_file_error(broken).contains("PEM"));
        let missing = trust_store(Some(Path::new("/nonexistent/ca.pem")))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.pem") && missing.contains("cannot be read"));
    }
}
