//! A backfill's second pass over a versioned bucket: ListObjectVersions, and every version
//! that is not the current one (and every delete marker) written as a version row, so that
//! `object_versions` holds what the bucket holds and a later permanent delete of the current
//! version reveals the right one (docs/versions.md). The current versions are the listing's
//! own (its HEAD reports their version id).
//!
//! Older versions are read with HeadObject of their version id (their metadata is in no
//! listing), several at a time; a delete marker needs no read. Each page's rows are one
//! transaction, versioned as reads started at the page's database time, like the listing's
//! (sql/0004). The pass keeps no checkpoint: an interrupted one starts over, its writes being
//! idempotent.

use futures::stream::{self, StreamExt, TryStreamExt};

use super::store::Store;
use super::{stops_the_listing, with_retries, DbClock, ListingError, Settings, Summary, Target};
use crate::event::whole_seconds_ns;
use crate::event::{Action, Basis, Change, ObjectId};
use crate::s3::{ListedVersion, ObjectRead, S3Error, S3};

/// The event name of a delete marker read from the bucket (a removal whose `delete_marker`
/// is set: sql/0005 recognises `DeleteMarker` in the name).
pub const MARKER_EVENT_NAME: &str = "objmeta:Backfill:DeleteMarker";

/// Writes the older versions and delete markers of `target`'s bucket when it keeps versions;
/// counts them in `summary.versions`.
pub async fn backfill(
    s3: &S3,
    store: &Store,
    target: &Target,
    settings: &Settings,
    summary: &mut Summary,
) -> Result<(), ListingError> {
    let retried = |e: &S3Error| e.is_retriable();
    let versioned = with_retries(
        settings.retry_timeout,
        "reading the bucket's versioning",
        retried,
        &mut summary.retries,
        || s3.versioned(&target.bucket),
    )
    .await?;
    if !versioned {
        return Ok(());
    }
    let mut marker = None;
    let mut order = Order::default();
    loop {
        let page = with_retries(
            settings.retry_timeout,
            "listing versions",
            retried,
            &mut summary.retries,
            || s3.list_versions_page(&target.bucket, &target.prefix, marker.as_ref()),
        )
        .await?;
        let clock = DbClock::sample(store).await?;
        // The current versions are the listing's; delete markers are never listed there.
        let older: Vec<(ListedVersion, i64)> = order
            .place(page.versions)
            .into_iter()
            .filter(|(v, _)| !v.latest || v.delete_marker)
            .collect();
        let reads: Vec<Option<Change>> = stream::iter(older)
            .map(move |(version, sequencer)| read(s3, target, version, sequencer, clock, settings))
            .buffered(settings.concurrency.max(1))
            .try_collect()
            .await?;
        let mut changes: Vec<Change> = reads.into_iter().flatten().collect();
        changes.sort_by(|a, b| a.object.cmp(&b.object));
        with_retries(
            settings.retry_timeout,
            "writing versions",
            crate::error::SinkError::is_retried,
            &mut summary.retries,
            || store.write_changes(&changes),
        )
        .await?;
        summary.versions += changes.len() as u64;
        tracing::info!(bucket = %target.bucket, versions = summary.versions, "older versions and delete markers written");
        match page.next {
            Some(next) => marker = Some(next),
            None => return Ok(()),
        }
    }
}

/// The change one listed version makes: a delete marker as a removal of its version, an
/// older version as what its HEAD says (`None`: it went meanwhile).
async fn read(
    s3: &S3,
    target: &Target,
    version: ListedVersion,
    sequencer: i64,
    clock: DbClock,
    settings: &Settings,
) -> Result<Option<Change>, ListingError> {
    let at = clock.now();
    let object = ObjectId {
        bucket: target.bucket.clone(),
        key: version.key.clone(),
    };
    if version.delete_marker {
        return Ok(Some(Change {
            object,
            event_name: MARKER_EVENT_NAME.to_string(),
            event_time: version.last_modified,
            sequencer,
            action: Action::Remove {
                version_id: Some(version.version_id.clone()),
                only_if_current_version: false,
            },
            record: 0,
            basis: Basis::Read { at },
        }));
    }
    let mut retries = 0;
    let head = with_retries(
        settings.retry_timeout,
        "reading a version",
        |e: &S3Error| e.is_retriable(),
        &mut retries,
        || s3.head_version(&target.bucket, &version.key, &version.version_id),
    )
    .await;
    let read: Option<ObjectRead> = match head {
        Ok(read) => read,
        Err(e) if stops_the_listing(&e) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(bucket = %target.bucket, key = %version.key, version = %version.version_id, error = %e, "cannot read a version");
            None
        }
    };
    Ok(read.map(|mut read| {
        read.version_id = Some(version.version_id.clone());
        Change {
            sequencer,
            ..read.into_change(object, target.kind.event_name(), at)
        }
    }))
}

/// Sequencers for the versions of a listing, newest first per key as S3 lists them: each its
/// Last-Modified in whole seconds (what a HEAD says, so the current version's equals the
/// listing pass's read of it), but always below the newer version's of the same key. Whole
/// seconds cannot order two versions of one second; the listing's order can, and an older
/// version of the same second is placed just before it (ns below).
#[derive(Default)]
struct Order {
    /// The last key placed and its last sequencer: a key's versions may span two pages.
    last: Option<(String, i64)>,
}

impl Order {
    fn place(&mut self, mut versions: Vec<ListedVersion>) -> Vec<(ListedVersion, i64)> {
        // The SDK gives versions and delete markers as two lists: merged back into S3's
        // order (by key; the current one first; then newest first).
        versions.sort_by(|a, b| {
            (&a.key, !a.latest, std::cmp::Reverse(a.last_modified)).cmp(&(
                &b.key,
                !b.latest,
                std::cmp::Reverse(b.last_modified),
            ))
        });
        versions
            .into_iter()
            .map(|version| {
                let second = whole_seconds_ns(version.last_modified);
                let sequencer = match &self.last {
                    Some((key, newer)) if *key == version.key => second.min(newer - 1),
                    _ => second,
                };
                self.last = Some((version.key.clone(), sequencer));
                (version, sequencer)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn version(key: &str, id: &str, latest: bool, at: time::OffsetDateTime) -> ListedVersion {
        ListedVersion {
            key: key.into(),
            version_id: id.into(),
            latest,
            delete_marker: false,
            last_modified: at,
        }
    }

    #[test]
    fn versions_of_one_second_keep_the_listing_order() {
        let second = datetime!(2026-12-02 15:00:00 UTC);
        let mut order = Order::default();
        let placed = order.place(vec![
            version("a", "a1", false, second),
            version("a", "a2", true, second),
            version("b", "b1", true, datetime!(2026-12-02 15:00:07.5 UTC)),
        ]);
        let sequencers: Vec<(&str, i64)> = placed
            .iter()
            .map(|(v, s)| (v.version_id.as_str(), *s))
            .collect();
        let ns = whole_seconds_ns(second);
        assert_eq!(
            sequencers,
            vec![("a2", ns), ("a1", ns - 1), ("b1", ns + 7_000_000_000)]
        );
        // The next page goes on below the last version of the same key.
        let next = order.place(vec![version(
            "b",
            "b0",
            false,
            datetime!(2026-12-02 15:00:07 UTC),
        )]);
        assert_eq!(next[0].1, ns + 7_000_000_000 - 1);
    }
}
