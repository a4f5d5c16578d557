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

use crate::event::{whole_seconds_ns, Action, Basis, Change, Metadata, ObjectId, ObjectState};

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

/// One ListObjectVersions page, in the server's order (key, then newest version first).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionsPage {
    pub versions: Vec<ListedVersion>,
    /// The key and version id markers of the next page; `None` on the last page.
    pub next: Option<(String, String)>,
}

/// One version, or delete marker, of a versions listing.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedVersion {
    /// Decoded, as in [`Listed`].
    pub key: String,
    pub version_id: String,
    /// The current version of its key.
    pub latest: bool,
    pub delete_marker: bool,
    pub last_modified: OffsetDateTime,
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

impl ObjectRead {
    /// A read's sequencer: Last-Modified in whole seconds, as ns. A listing may give
    /// milliseconds (MinIO's does), HeadObject never does; one unit for every read keeps
    /// reads of one state equal.
    pub fn sequencer(&self) -> i64 {
        whole_seconds_ns(self.last_modified)
    }

    /// The change this read makes of `object`: the state the store reported, versioned as a
    /// read started at `at` (sql/0004: Last-Modified, in whole seconds, orders it).
    pub fn into_change(self, object: ObjectId, event_name: &str, at: OffsetDateTime) -> Change {
        Change {
            object,
            event_name: event_name.to_string(),
            event_time: self.last_modified,
            sequencer: self.sequencer(),
            action: Action::Upsert(self.into_state()),
            record: 0,
            basis: Basis::Read { at },
        }
    }

    /// The object's state as a row holds it.
    pub fn into_state(self) -> ObjectState {
        ObjectState {
            version_id: self.version_id,
            size: self.size,
            etag: self.etag,
            content_type: self.content_type,
            user_metadata: self.user_metadata,
            system_metadata: self.system_metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn read_at(last_modified: OffsetDateTime) -> ObjectRead {
        ObjectRead {
            etag: None,
            size: None,
            last_modified,
            version_id: None,
            content_type: None,
            user_metadata: Metadata::default(),
            system_metadata: Metadata::default(),
        }
    }

    #[test]
    fn a_read_is_versioned_by_its_whole_second() {
        assert_eq!(
            read_at(datetime!(2026-01-15 10:00:00.987 UTC)).sequencer(),
            read_at(datetime!(2026-01-15 10:00:00 UTC)).sequencer()
        );
        assert_eq!(read_at(OffsetDateTime::UNIX_EPOCH).sequencer(), 0);
        assert_eq!(
            read_at(datetime!(1970-01-01 00:00:01 UTC)).sequencer(),
            1_000_000_000
        );
    }
}
