//! Why an S3 request failed, and the one place that decides which failures are retried.
//!
//! The rule: the server being busy or briefly unavailable (throttling, HTTP 500/502/503/504),
//! a timeout, or the network (connection refused or reset, DNS) may pass, so the caller
//! retries with backoff. Everything a person must fix (credentials, permissions, a bucket
//! name, the endpoint's certificate, a response objmeta cannot read) is not retriable.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// The request that failed, named in every error's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Request {
    /// ListObjectsV2.
    List { bucket: String },
    /// HeadObject.
    Head { bucket: String, key: String },
    /// GetBucketVersioning.
    Versioning { bucket: String },
    /// ListObjectVersions.
    ListVersions { bucket: String },
}

impl S3Request {
    pub fn bucket(&self) -> &str {
        match self {
            Self::List { bucket }
            | Self::Head { bucket, .. }
            | Self::Versioning { bucket }
            | Self::ListVersions { bucket } => bucket,
        }
    }

    /// The IAM action the request needs.
    pub fn permission(&self) -> &'static str {
        match self {
            Self::List { .. } => "s3:ListBucket",
            // A HEAD of one version needs s3:GetObjectVersion; of the current one, s3:GetObject.
            Self::Head { .. } => "s3:GetObject",
            Self::Versioning { .. } => "s3:GetBucketVersioning",
            Self::ListVersions { .. } => "s3:ListBucketVersions",
        }
    }
}

impl fmt::Display for S3Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::List { bucket } => write!(f, "listing bucket {bucket:?}"),
            Self::Head { bucket, key } => write!(f, "HEAD of {key:?} in bucket {bucket:?}"),
            Self::Versioning { bucket } => write!(f, "reading the versioning of bucket {bucket:?}"),
            Self::ListVersions { bucket } => write!(f, "listing the versions in bucket {bucket:?}"),
        }
    }
}

/// A failed S3 request (or a configuration that cannot make one). Messages name the request
/// and say what to do; they never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    /// 403. A HEAD response has no body, so without a code it may also be wrong credentials.
    #[error(
        "{request}: access denied{}: the S3 credentials need {} on bucket {:?}{}",
        code_note(.code), .request.permission(), .request.bucket(), head_note(.request, .code)
    )]
    AccessDenied {
        request: S3Request,
        code: Option<String>,
    },
    #[error(
        "{request}: the bucket does not exist (NoSuchBucket): check the bucket name and \
         --s3-endpoint (S3_ENDPOINT)"
    )]
    NoSuchBucket { request: S3Request },
    #[error(
        "{request}: the S3 server refused the credentials ({code}): check S3_ACCESS_KEY and \
         S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )]
    Credentials { request: S3Request, code: String },
    #[error("{request}: throttled by the S3 server (HTTP {status}{})", code_note(.code))]
    Throttled {
        request: S3Request,
        status: u16,
        code: Option<String>,
    },
    #[error("{request}: S3 server error (HTTP {status}{}){}", code_note(.code), message_note(.message))]
    Server {
        request: S3Request,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("{request}: timed out: {detail}")]
    Timeout { request: S3Request, detail: String },
    #[error("{request}: cannot reach the S3 endpoint: {detail}")]
    Connection { request: S3Request, detail: String },
    #[error(
        "{request}: TLS with the S3 endpoint failed: {detail}; if its certificate is signed by a \
         private CA, set --s3-ca-file (S3_CA_FILE) to that CA's PEM file"
    )]
    Tls { request: S3Request, detail: String },
    #[error("{request}: unexpected response from the S3 server: {detail}")]
    InvalidResponse { request: S3Request, detail: String },
    /// Any other refusal (HTTP 400 InvalidArgument, RequestTimeTooSkewed, a wrong region, …).
    #[error("{request}: {detail}")]
    Other { request: S3Request, detail: String },
}

fn code_note(code: &Option<String>) -> String {
    code.as_ref()
        .map(|code| format!(", {code}"))
        .unwrap_or_default()
}

fn message_note(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|message| format!(": {message}"))
        .unwrap_or_default()
}

fn head_note(request: &S3Request, code: &Option<String>) -> &'static str {
    match (request, code) {
        (S3Request::Head { .. }, None) => {
            " (a HEAD response carries no error code: if listing the bucket works, the \
             permission is missing, otherwise check S3_ACCESS_KEY and S3_SECRET_KEY)"
        }
        _ => "",
    }
}

/// Error codes of a refused signature or key (403, or 400 for tokens; versitygw answers an
/// unknown access key with 404 XAdminUserNotFound).
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "XAdminUserNotFound",
];

/// Error codes S3 and compatible stores use to ask a client to slow down.
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
];

impl S3Error {
    /// Whether the same request may succeed later: throttling, HTTP 500/502/503/504,
    /// timeouts and connection failures. The caller retries these with backoff.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Connection { .. }
        )
    }

    /// A short fixed label for metrics: `config`, `access_denied`, `no_such_bucket`,
    /// `credentials`, `throttled`, `server`, `timeout`, `connection`, `tls`,
    /// `invalid_response` or `other`.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::AccessDenied { .. } => "access_denied",
            Self::NoSuchBucket { .. } => "no_such_bucket",
            Self::Credentials { .. } => "credentials",
            Self::Throttled { .. } => "throttled",
            Self::Server { .. } => "server",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::Tls { .. } => "tls",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::Other { .. } => "other",
        }
    }

    /// The error of one SDK call.
    pub(super) fn from_sdk<E>(request: S3Request, error: SdkError<E, HttpResponse>) -> S3Error
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let detail = chain(&error);
        match &error {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let meta = service.err();
                S3Error::from_status(request, status, meta.code(), meta.message())
            }
            SdkError::TimeoutError(_) => S3Error::Timeout { request, detail },
            SdkError::DispatchFailure(_) if find::<rustls::Error>(&error).is_some() => {
                S3Error::Tls { request, detail }
            }
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                S3Error::Timeout { request, detail }
            }
            SdkError::DispatchFailure(failure) if failure.is_user() => {
                S3Error::Other { request, detail }
            }
            SdkError::DispatchFailure(_) => S3Error::Connection { request, detail },
            // The body could not be read (the connection broke) or parsed.
            SdkError::ResponseError(_)
                if find::<std::io::Error>(&error).is_some()
                    || find::<hyper::Error>(&error).is_some() =>
            {
                S3Error::Connection { request, detail }
            }
            SdkError::ResponseError(_) => S3Error::InvalidResponse { request, detail },
            _ => S3Error::Other { request, detail },
        }
    }

    /// A refusal by the server: its HTTP status and, when the response had a body, the S3
    /// error code and message.
    pub(super) fn from_status(
        request: S3Request,
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
    ) -> S3Error {
        let owned = |text: Option<&str>| text.map(str::to_string);
        match (status, code) {
            (_, Some(code)) if CREDENTIAL_CODES.contains(&code) => S3Error::Credentials {
                request,
                code: code.to_string(),
            },
            (_, Some("NoSuchBucket")) => S3Error::NoSuchBucket { request },
            (403, None) | (_, Some("AccessDenied" | "AllAccessDisabled")) => {
                S3Error::AccessDenied {
                    request,
                    code: owned(code),
                }
            }
            (_, Some(code)) if THROTTLING_CODES.contains(&code) => S3Error::Throttled {
                request,
                status,
                code: Some(code.to_string()),
            },
            // S3's 503 is SlowDown; a HEAD response has no body to say so.
            (429, _) | (503, None) => S3Error::Throttled {
                request,
                status,
                code: owned(code),
            },
            // The server closed a connection the request was slow to use; S3 says retry.
            (_, Some("RequestTimeout")) => S3Error::Timeout {
                request,
                detail: format!(
                    "HTTP {status} RequestTimeout{}",
                    message_note(&owned(message))
                ),
            },
            (500 | 502 | 503 | 504, _) => S3Error::Server {
                request,
                status,
                code: owned(code),
                message: owned(message),
            },
            _ => S3Error::Other {
                request,
                detail: format!(
                    "the S3 server refused the request (HTTP {status}{}){}",
                    code_note(&owned(code)),
                    message_note(&owned(message))
                ),
            },
        }
    }
}

/// The messages of an error and its sources, `: `-separated, repeats dropped (the SDK's
/// wrappers often repeat their source's text).
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// The first error of type `T` in `error`'s chain, going into each `io::Error`'s payload,
/// which its `source()` skips (hyper-rustls nests a rustls error two `io::Error`s deep).
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        let payload = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        next = match payload {
            Some(payload) => Some(payload),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> S3Request {
        S3Request::List {
            bucket: "photos".to_string(),
        }
    }

    fn head() -> S3Request {
        S3Request::Head {
            bucket: "photos".to_string(),
            key: "2026/a b.jpg".to_string(),
        }
    }

    fn classify(request: S3Request, status: u16, code: Option<&str>) -> S3Error {
        S3Error::from_status(request, status, code, Some("server says why"))
    }

    #[test]
    fn retriable_failures_are_load_and_network() {
        let cases: &[(u16, Option<&str>, &str)] = &[
            (503, Some("SlowDown"), "throttled"),
            (503, None, "throttled"),
            (429, None, "throttled"),
            (400, Some("Throttling"), "throttled"),
            (500, Some("InternalError"), "server"),
            (502, None, "server"),
            (503, Some("XMinioServerNotInitialized"), "server"),
            (504, None, "server"),
            (400, Some("RequestTimeout"), "timeout"),
        ];
        for &(status, code, label) in cases {
            let error = classify(list(), status, code);
            assert_eq!(error.kind_label(), label, "{status} {code:?}: {error}");
            assert!(error.is_retriable(), "{status} {code:?}");
        }
    }

    #[test]
    fn fatal_failures_say_what_to_fix() {
        // (request, status, code, label, what the message mentions)
        type Case<'a> = (S3Request, u16, Option<&'a str>, &'a str, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                list(),
                403,
                Some("AccessDenied"),
                "access_denied",
                &["s3:ListBucket", "\"photos\""],
            ),
            (
                head(),
                403,
                None,
                "access_denied",
                &["s3:GetObject", "\"2026/a b.jpg\"", "S3_SECRET_KEY"],
            ),
            (
                list(),
                404,
                Some("NoSuchBucket"),
                "no_such_bucket",
                &["\"photos\"", "S3_ENDPOINT"],
            ),
            (
                list(),
                403,
                Some("InvalidAccessKeyId"),
                "credentials",
                &["S3_ACCESS_KEY", "S3_SECRET_KEY"],
            ),
            (
                list(),
                403,
                Some("SignatureDoesNotMatch"),
                "credentials",
                &["S3_ACCESS_KEY"],
            ),
            (
                list(),
                404,
                Some("XAdminUserNotFound"),
                "credentials",
                &["S3_ACCESS_KEY"],
            ),
            (
                list(),
                400,
                Some("InvalidArgument"),
                "other",
                &["HTTP 400", "InvalidArgument", "server says why"],
            ),
            (
                list(),
                501,
                Some("NotImplemented"),
                "other",
                &["NotImplemented"],
            ),
            (
                list(),
                403,
                Some("RequestTimeTooSkewed"),
                "other",
                &["RequestTimeTooSkewed"],
            ),
        ];
        for (request, status, code, label, mentions) in cases {
            let error = classify(request.clone(), *status, *code);
            let shown = error.to_string();
            assert_eq!(error.kind_label(), *label, "{shown}");
            assert!(!error.is_retriable(), "{shown}");
            for mention in *mentions {
                assert!(shown.contains(mention), "{mention:?} missing from {shown}");
            }
        }
    }

    #[test]
    fn a_listing_denial_needs_no_credentials_hint() {
        let shown = classify(list(), 403, Some("AccessDenied")).to_string();
        assert_eq!(
            shown,
            "listing bucket \"photos\": access denied, AccessDenied: the S3 credentials need \
             s3:ListBucket on bucket \"photos\""
        );
    }

    #[test]
    fn find_looks_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = Wrapper(std::io::Error::other(inner));
        assert!(find::<rustls::Error>(&outer).is_some());
        assert!(find::<hyper::Error>(&outer).is_none());
        assert_eq!(
            chain(&outer),
            "wrapped: invalid peer certificate: UnknownIssuer"
        );
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
}
