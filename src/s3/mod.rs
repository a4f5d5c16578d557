//! The only module that talks to the S3 API: ListObjectsV2 pages and HeadObject, for
//! backfill and reconcile (reading a bucket's current state rather than its events).
//!
//! One request is one attempt: the SDK's own retries are off, because the caller retries
//! with its backoff and counts the retries ([`S3Error::is_retriable`] says which errors
//! may succeed later). Every request is bounded by `--s3-request-timeout`.
//!
//! What the store says about an object is an [`ObjectRead`], built the same way whether it
//! came from a HEAD or from a MinIO listing that carries metadata: the metadata rule is
//! `event::split_entries`, the one MinIO events go through, so a row written from the
//! bucket compares equal to one written from an event of the same object.

mod client;
mod config;
mod error;
mod listing;

pub use client::S3;
pub use config::S3Config;
pub use error::{S3Error, S3Request};

use time::OffsetDateTime;

use crate::event::Metadata;

/// One ListObjectsV2 page, its objects in the server's key order (UTF-8 byte order on S3).
#[derive(Clone, Debug, PartialEq)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    /// The continuation token of the next page; `None` on the last page.
    pub next: Option<String>,
    /// Whether the server returned MinIO's listing metadata (`metadata=true`), detected
    /// positively: some object of the page carried `<Internal>` or `<UserMetadata>`. A page
    /// without objects proves nothing and says `false`.
    pub metadata_supported: bool,
}

/// One object of a listing page.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The object key, decoded (what S3 clients use), never the listing's url-encoded form.
    pub key: String,
    /// `Some` when the listing itself carried the object's metadata (MinIO `metadata=true`),
    /// so no HEAD is needed; `None` when the caller must HEAD the object for it.
    pub read: Option<ObjectRead>,
}

/// What the store says about one object, from a HEAD or a metadata listing.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectRead {
    /// Without the surrounding quotes S3 puts on it (MinIO events carry it unquoted).
    pub etag: Option<String>,
    pub size: Option<i64>,
    /// HEAD's `Last-Modified` has 1 s precision; a MinIO listing has milliseconds.
    pub last_modified: OffsetDateTime,
    /// `None` for `null` (unversioned) and when absent. A listing (ListObjectsV2) never
    /// carries it: only a HEAD gives the version of a versioned bucket's object.
    pub version_id: Option<String>,
    pub content_type: Option<String>,
    /// `x-amz-meta-*` entries, prefix stripped, keys lower-cased (as from a MinIO event).
    pub user_metadata: Metadata,
    /// `content-type`, `cache-control`, `content-encoding`, `content-disposition`,
    /// `content-language`, `expires` (from a HEAD) or every other entry a MinIO listing
    /// carries, keys lower-cased.
    pub system_metadata: Metadata,
}

/// An ETag without the double quotes S3 wraps it in; an empty one is absent.
fn unquote_etag(etag: &str) -> Option<String> {
    let bare = etag
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(etag);
    (!bare.is_empty()).then(|| bare.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_their_quotes_only() {
        assert_eq!(unquote_etag("\"abc\"").as_deref(), Some("abc"));
        assert_eq!(unquote_etag("abc").as_deref(), Some("abc"));
        assert_eq!(unquote_etag("\"abc-2\"").as_deref(), Some("abc-2"));
        assert_eq!(unquote_etag("\"abc").as_deref(), Some("\"abc"));
        assert_eq!(unquote_etag("\"\""), None);
        assert_eq!(unquote_etag(""), None);
    }
}
