//! Bucket notifications of S3 stores: the wire model of a Kafka message and its conversion
//! into per-object changes. Pure: no I/O, no clock, no logging.
//!
//! The wire structs mirror MinIO's Go types (`internal/event/event.go`) field for field and in
//! Go's order, so `produce` can publish byte-compatible messages from the same model; the
//! other stores' records share MinIO's shape closely enough to be read by the same structs,
//! and what differs between stores (envelope, key encoding, metadata shape, sequencer, and
//! whether an event can be trusted for the object's state) is decided per record by
//! [`source`]. When parsing, only the fields objmeta uses are read; every other field (known
//! or not) is skipped without allocating, because this parser sees ~100k messages a second.

mod escape;
mod source;
mod wire;

pub use escape::{query_escape, query_unescape};
pub use source::{Decoding, Enrich, SourceChoice, Store};
pub use wire::{Bucket, Envelope, Identity, Object, Record, Source, UserMetadata, S3};

use serde::de::DeserializeSeed;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use wire::{Detail, Document, EnvelopeSeed};

/// One object of one bucket. `key` is the decoded object name (what S3 clients use), never the
/// query-escaped form found in `s3.object.key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub bucket: String,
    pub key: String,
}

/// What one event record says about one object's current state.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub object: ObjectId,
    /// The record's `eventName` in one form for every store, with the `s3:` prefix
    /// (`s3:ObjectCreated:Put`; Ceph and AWS send it without), or `objmeta:Enrich` once
    /// the state was read from the store.
    pub event_name: String,
    pub event_time: OffsetDateTime,
    /// The store's sequencer as a number (`Store::sequencer`): orders the events of one
    /// object (newer or equal wins). For a read, Last-Modified in whole seconds as ns.
    pub sequencer: i64,
    pub action: Action,
    /// Index of the record in its message's `Records`: with the message's
    /// partition and offset it names the record, e.g. in a dead letter.
    pub record: u32,
    /// What the change's state rests on.
    pub basis: Basis,
}

/// Where a change's state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Basis {
    /// The event itself: its state and its sequencer are written as they are.
    #[default]
    Event,
    /// The event only says that the object changed: its state must be read from the store
    /// (HeadObject) before the change is written (`--enrich`).
    Hint,
    /// The store's answer to a read started at this time (database clock): the state is
    /// what the store said, versioned like a backfill's read (sql/0004).
    Read { at: OffsetDateTime },
}

impl Basis {
    /// An event's basis: a hint where its state is read from the store.
    fn of(reads: bool) -> Basis {
        match reads {
            true => Basis::Hint,
            false => Basis::Event,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The object exists with this state (`s3:ObjectCreated:*`).
    Upsert(ObjectState),
    /// The object is no longer current (`s3:ObjectRemoved:*`, `s3:LifecycleDelMarkerExpiration:*`).
    ///
    /// `only_if_current_version` is true for `s3:ObjectRemoved:Delete` carrying a `versionId`:
    /// deleting one specific version removes the row only when that version is the current one,
    /// because deleting an older version leaves the object in place. DeleteMarkerCreated,
    /// DeleteAllVersions, NoOP, the other removals and lifecycle expirations are unconditional.
    Remove {
        version_id: Option<String>,
        only_if_current_version: bool,
    },
}

/// An object's state as a Created event reports it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ObjectState {
    pub version_id: Option<String>,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    /// `x-amz-meta-*` entries: prefix (matched case-insensitively) stripped, key lower-cased.
    pub user_metadata: Metadata,
    /// Every other `userMetadata` entry (`content-type`, `cache-control`, …), key lower-cased.
    pub system_metadata: Metadata,
}

/// A metadata object as JSON text, e.g. `{"api":"https://…","id":"1843"}`: keys
/// unique and sorted, values strings.
///
/// Kept as text because objmeta only hands it to PostgreSQL (as jsonb): one
/// string per object is far cheaper to build, hold in a batch and free than a
/// map with an allocation per entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata(String);

impl Metadata {
    fn from_entries(entries: &BTreeMap<String, &str>) -> Self {
        // Serializing strings into a String cannot fail.
        Metadata(serde_json::to_string(entries).unwrap_or_else(|_| "{}".to_string()))
    }

    /// The JSON object text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == "{}"
    }

    /// The value of one entry, e.g. the system entry `content-type` of a listing.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let mut entries: BTreeMap<String, String> = serde_json::from_str(&self.0).ok()?;
        entries.remove(key)
    }

    /// The object as a JSON value (for tests and dead-letter payloads).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata("{}".to_string())
    }
}

/// Event families, for metrics labels: a small fixed set, never the raw event name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventFamily {
    Created,
    Removed,
    Accessed,
    Replication,
    Restore,
    Transition,
    Scanner,
    Bucket,
    /// `s3:TestEvent`: sent by versitygw at start and by AWS on configuration.
    Test,
    Other,
}

impl EventFamily {
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Removed => "removed",
            Self::Accessed => "accessed",
            Self::Replication => "replication",
            Self::Restore => "restore",
            Self::Transition => "transition",
            Self::Scanner => "scanner",
            Self::Bucket => "bucket",
            Self::Test => "test",
            Self::Other => "other",
        }
    }

    /// The family of an event name, from its first segment after the optional `s3:` prefix
    /// (`[s3:]<Family>:<Operation>`). Names of no known family are `Other`.
    pub fn of(event_name: &str) -> EventFamily {
        let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
        let mut segments = name.split(':');
        let family = segments.next().unwrap_or_default();
        let operation = segments.next();
        match (family, operation) {
            ("TestEvent", None) => Self::Test,
            (_, None) => Self::Other,
            // AWS names tagging events apart; MinIO counts them as creations.
            ("ObjectCreated" | "ObjectTagging", _) => Self::Created,
            ("ObjectRemoved" | "LifecycleDelMarkerExpiration" | "LifecycleExpiration", _) => {
                Self::Removed
            }
            // Ceph: ObjectLifecycle:Expiration:* and ObjectLifecycle:Transition:*; an
            // aborted multipart upload was never an object.
            ("ObjectLifecycle", Some("Expiration")) if segments.next() == Some("AbortMPU") => {
                Self::Other
            }
            ("ObjectLifecycle", Some("Expiration")) => Self::Removed,
            ("ObjectLifecycle" | "ObjectTransition" | "LifecycleTransition", _) => Self::Transition,
            ("IntelligentTiering", _) => Self::Transition,
            ("ObjectAccessed", _) => Self::Accessed,
            ("ObjectReplication" | "Replication" | "ObjectSynced", _) => Self::Replication,
            ("ObjectRestore", _) => Self::Restore,
            ("Scanner", _) => Self::Scanner,
            ("BucketCreated" | "BucketRemoved", _) => Self::Bucket,
            _ => Self::Other,
        }
    }

    /// Only these families change an object's row.
    fn changes_objects(self) -> bool {
        matches!(self, Self::Created | Self::Removed)
    }
}

/// The removal an event of the `removed` family makes. With a version id, a delete of one
/// version (`ObjectRemoved:Delete`) or Ceph's lifecycle expiration of a noncurrent version
/// removes only that version, which leaves the object in place unless it is the current
/// one; a hint is read instead, so it needs no such condition.
fn removal(event_name: &str, version_id: Option<String>, reads: bool) -> Action {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    let one_version = matches!(
        name,
        "ObjectRemoved:Delete" | "ObjectLifecycle:Expiration:Noncurrent"
    );
    Action::Remove {
        only_if_current_version: !reads && one_version && version_id.is_some(),
        version_id,
    }
}

/// A time's whole seconds, in the ns of sequencers: how a read of the bucket (Last-Modified
/// has whole seconds) and versitygw's second-stamped events are placed.
pub fn whole_seconds_ns(time: OffsetDateTime) -> i64 {
    time.unix_timestamp().saturating_mul(1_000_000_000)
}

/// What one Kafka message holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub changes: Vec<Change>,
    /// One entry per record of a family that does not change object rows (read, replication,
    /// test, …).
    pub skipped: Vec<EventFamily>,
    /// Every record's store (`None`: not recognised, in a family that changes no rows) and
    /// family, for metrics.
    pub seen: Vec<(Option<Store>, EventFamily)>,
}

/// Why a message cannot be turned into changes. The caller dead-letters the message with its
/// raw bytes; `label()` is a short fixed code for metrics, `Display` says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("empty message: the Kafka value is null or blank")]
    Empty,
    #[error("invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("invalid JSON: not UTF-8 (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("not an S3 event notification: {0}")]
    NotS3Event(String),
    #[error("not an S3 event notification: \"Records\" is an empty array")]
    NoRecords,
    #[error("{event_source:?} is not the eventSource of a supported store (minio:s3, rustfs:s3, ceph:s3, aws:s3); --source names the store of a topic")]
    UnknownStore { event_source: String },
    /// Something is wrong in record `index` of `Records`.
    #[error("record {index}: {error}")]
    Record {
        index: usize,
        error: Box<ParseError>,
    },
    /// Something is wrong with one field of a record (a JSON path such as `s3.object.key`).
    #[error("{field}: {error}")]
    Field {
        field: Cow<'static, str>,
        error: Box<ParseError>,
    },
    /// A JSON value of the wrong type or range (serde's message carries line and column).
    #[error("{0}")]
    WrongType(String),
    #[error("missing or empty")]
    Missing,
    #[error("invalid escape {escape:?}")]
    InvalidEscape { escape: String },
    #[error("unescaped bytes are not valid UTF-8")]
    NotUtf8,
    #[error("{value:?} is not a sequencer: {reason}")]
    BadSequencer { value: String, reason: &'static str },
    #[error("{value:?} is not an RFC 3339 time: {reason}")]
    BadEventTime { value: String, reason: String },
    #[error("contains a NUL character (U+0000), which PostgreSQL text and jsonb cannot store")]
    NulCharacter,
    #[error("value must be a string, found {found}")]
    NotString { found: &'static str },
}

impl ParseError {
    /// Short fixed reason code for a metrics label; wrappers report their cause's code. One of
    /// `empty`, `invalid_json`, `not_s3_event`, `no_records`, `bad_field`, `missing_field`,
    /// `bad_key`, `bad_sequencer`, `bad_event_time`, `nul_character`, `bad_metadata`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::InvalidJson(_) | Self::InvalidUtf8 { .. } => "invalid_json",
            Self::NotS3Event(_) | Self::UnknownStore { .. } => "not_s3_event",
            Self::NoRecords => "no_records",
            Self::Record { error, .. } | Self::Field { error, .. } => error.label(),
            Self::WrongType(_) => "bad_field",
            Self::Missing => "missing_field",
            Self::InvalidEscape { .. } | Self::NotUtf8 => "bad_key",
            Self::BadSequencer { .. } => "bad_sequencer",
            Self::BadEventTime { .. } => "bad_event_time",
            Self::NulCharacter => "nul_character",
            Self::NotString { .. } => "bad_metadata",
        }
    }

    fn at(field: impl Into<Cow<'static, str>>) -> impl FnOnce(ParseError) -> ParseError {
        let field = field.into();
        move |error| ParseError::Field {
            field,
            error: Box::new(error),
        }
    }
}

/// Parses one Kafka message value with the default decoding (every store recognised,
/// `--enrich auto`); see [`parse_with`].
pub fn parse(payload: Option<&[u8]>) -> Result<Parsed, ParseError> {
    parse_with(payload, &Decoding::default())
}

/// Parses one Kafka message value (`None` is a tombstone) into the changes it carries.
///
/// Every record must be valid, or the whole message is an error naming the record: a message is
/// dead-lettered as a unit with its raw bytes, never half applied. A NUL character (U+0000) in
/// any stored text (bucket, key, event name, version, eTag, content type, metadata key or
/// value) is rejected here, because PostgreSQL text and jsonb cannot store it and the batch
/// write would otherwise fail for every message in it. Records of families that change no rows
/// are only counted in `skipped`; they need no bucket, key or sequencer. A test message
/// (`s3:TestEvent`, no records) is a skipped record of the `test` family.
pub fn parse_with(payload: Option<&[u8]>, decoding: &Decoding) -> Result<Parsed, ParseError> {
    let bytes = payload
        .filter(|bytes| !bytes.iter().all(u8::is_ascii_whitespace))
        .ok_or(ParseError::Empty)?;
    let document = deserialize_document(bytes)?;
    if let Some(detail) = &document.detail {
        return eventbridge(&document, detail, decoding);
    }
    let Some(records) = &document.records else {
        return test_message(&document, decoding);
    };
    if records.is_empty() {
        return Err(ParseError::NoRecords);
    }
    let mut parsed = Parsed {
        changes: Vec::with_capacity(records.len()),
        ..Parsed::default()
    };
    for (index, record) in records.iter().enumerate() {
        let (store, outcome) =
            convert(record, index, document.minio_envelope, decoding).map_err(|error| {
                ParseError::Record {
                    index,
                    error: Box::new(error),
                }
            })?;
        match outcome {
            Ok(change) => {
                parsed
                    .seen
                    .push((store, EventFamily::of(&change.event_name)));
                parsed.changes.push(change);
            }
            Err(family) => {
                parsed.seen.push((store, family));
                parsed.skipped.push(family);
            }
        }
    }
    Ok(parsed)
}

/// A message without records: the test message of versitygw or AWS, or not a notification.
fn test_message(document: &Document<'_>, decoding: &Decoding) -> Result<Parsed, ParseError> {
    if document.event.as_deref() != Some("s3:TestEvent") {
        return Err(ParseError::NotS3Event(
            "no \"Records\" (nor EventBridge's \"detail\", nor a test message's \"Event\")"
                .to_string(),
        ));
    }
    let store = match decoding.source {
        SourceChoice::Only(store) => store,
        SourceChoice::Auto if document.service.as_deref() == Some("Amazon S3") => Store::Aws,
        SourceChoice::Auto => Store::Versitygw,
    };
    Ok(Parsed {
        changes: Vec::new(),
        skipped: vec![EventFamily::Test],
        seen: vec![(Some(store), EventFamily::Test)],
    })
}

/// Reads the message's [`Document`], telling apart broken JSON, a document that is not a
/// notification, and a record with a wrongly typed field (named by its index).
///
/// The payload is validated as UTF-8 up front, because serde_json does not check the strings it
/// skips; parsing from `&str` then avoids validating the strings it reads a second time.
fn deserialize_document(bytes: &[u8]) -> Result<Document<'_>, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let current = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let result = EnvelopeSeed { current: &current }
        .deserialize(&mut deserializer)
        .and_then(|document| deserializer.end().map(|()| document));
    result.map_err(|error| match (error.classify(), current.get()) {
        (serde_json::error::Category::Data, Some(index)) => ParseError::Record {
            index,
            error: Box::new(ParseError::WrongType(error.to_string())),
        },
        (serde_json::error::Category::Data, None) => ParseError::NotS3Event(error.to_string()),
        _ => ParseError::InvalidJson(error),
    })
}

/// The store of a record and its change, or its family when it changes no rows.
type Converted = (Option<Store>, Result<Change, EventFamily>);

fn convert(
    record: &Record<'_>,
    index: usize,
    minio_envelope: bool,
    decoding: &Decoding,
) -> Result<Converted, ParseError> {
    let name = required_text(&record.event_name).map_err(ParseError::at("eventName"))?;
    let family = EventFamily::of(&name);
    let store = decoding.store(&record.event_source, &name, minio_envelope);
    if !family.changes_objects() {
        return Ok((store.ok(), Err(family)));
    }
    let store = store.map_err(ParseError::at("eventSource"))?;
    let object = object_id(
        store,
        &record.s3.bucket.name,
        &record.s3.object.key,
        ("s3.bucket.name", "s3.object.key"),
    )?;
    let event_time = parse_event_time(&record.event_time).map_err(ParseError::at("eventTime"))?;
    let sequencer = store
        .sequencer(&record.s3.object.sequencer, event_time)
        .map_err(ParseError::at("s3.object.sequencer"))?;
    let version_id = optional_text(&record.s3.object.version_id)
        .map_err(ParseError::at("s3.object.versionId"))?;
    let reads = decoding.reads_state(store);
    let action = match family {
        EventFamily::Created => Action::Upsert(object_state(&record.s3.object, version_id)?),
        _ => removal(&name, version_id, reads),
    };
    let change = Change {
        object,
        event_name: with_s3_prefix(name),
        event_time,
        sequencer,
        action,
        // No message holds 2^32 records; saturating keeps this total.
        record: u32::try_from(index).unwrap_or(u32::MAX),
        basis: Basis::of(reads),
    };
    Ok((Some(store), Ok(change)))
}

/// An event name in the form every store's names are stored in: `s3:` first.
fn with_s3_prefix(name: String) -> String {
    match name.starts_with("s3:") {
        true => name,
        false => format!("s3:{name}"),
    }
}

/// An EventBridge event of S3 (`"source": "aws.s3"`): one change, named as AWS names the
/// event records of the same operation, its key decoded as AWS's records are.
fn eventbridge(
    document: &Document<'_>,
    detail: &Detail<'_>,
    decoding: &Decoding,
) -> Result<Parsed, ParseError> {
    if document.source.as_deref() != Some("aws.s3") {
        let source = document.source.as_deref().unwrap_or_default();
        return Err(ParseError::NotS3Event(format!(
            "an EventBridge event from {source:?}, not \"aws.s3\""
        )));
    }
    let detail_type = document.detail_type.as_deref().unwrap_or_default();
    let name = eventbridge_name(detail_type, &detail.reason, &detail.deletion_type);
    let family = EventFamily::of(&name);
    if !family.changes_objects() {
        return Ok(Parsed {
            changes: Vec::new(),
            skipped: vec![family],
            seen: vec![(Some(Store::Aws), family)],
        });
    }
    let object = object_id(
        Store::Aws,
        &detail.bucket.name,
        &detail.object.key,
        ("detail.bucket.name", "detail.object.key"),
    )?;
    let event_time = parse_event_time(document.time.as_deref().unwrap_or_default())
        .map_err(ParseError::at("time"))?;
    let sequencer = Store::Aws
        .sequencer(&detail.object.sequencer, event_time)
        .map_err(ParseError::at("detail.object.sequencer"))?;
    let version_id = optional_text(&detail.object.version_id)
        .map_err(ParseError::at("detail.object.version-id"))?;
    let reads = decoding.reads_state(Store::Aws);
    let action = match family {
        EventFamily::Created => Action::Upsert(ObjectState {
            version_id,
            size: detail.object.size,
            etag: optional_text(&detail.object.etag)
                .map_err(ParseError::at("detail.object.etag"))?
                .as_deref()
                .and_then(unquote_etag),
            ..ObjectState::default()
        }),
        _ => removal(&name, version_id, reads),
    };
    let change = Change {
        object,
        event_name: name,
        event_time,
        sequencer,
        action,
        record: 0,
        basis: Basis::of(reads),
    };
    Ok(Parsed {
        changes: vec![change],
        skipped: Vec::new(),
        seen: vec![(Some(Store::Aws), family)],
    })
}

/// The event-record name of an EventBridge event: `Object Created` with reason
/// `CopyObject` is `s3:ObjectCreated:Copy`, `Object Deleted` of a delete marker is
/// `s3:ObjectRemoved:DeleteMarkerCreated`, and so on. Other detail types keep their name
/// (e.g. `s3:Object Restore Completed`), in no family that changes rows.
fn eventbridge_name(detail_type: &str, reason: &str, deletion_type: &str) -> String {
    let operation = match reason {
        "PutObject" => "Put",
        "POST Object" => "Post",
        "CopyObject" => "Copy",
        other => other,
    };
    match detail_type {
        "Object Created" => format!("s3:ObjectCreated:{operation}"),
        "Object Deleted" if deletion_type == "Delete Marker Created" => {
            "s3:ObjectRemoved:DeleteMarkerCreated".to_string()
        }
        "Object Deleted" if reason == "Lifecycle Expiration" => {
            "s3:LifecycleExpiration:Delete".to_string()
        }
        "Object Deleted" => "s3:ObjectRemoved:Delete".to_string(),
        "Object Tags Added" => "s3:ObjectTagging:Put".to_string(),
        "Object Tags Deleted" => "s3:ObjectTagging:Delete".to_string(),
        other => format!("s3:{other}"),
    }
}

fn object_id(
    store: Store,
    bucket: &str,
    key: &str,
    fields: (&'static str, &'static str),
) -> Result<ObjectId, ParseError> {
    let bucket = required_text(bucket).map_err(ParseError::at(fields.0))?;
    let key = required_text(key)
        .and_then(|wire| store.decode_key(&wire))
        .and_then(|key| no_nul(&key).map(|()| key))
        .map_err(ParseError::at(fields.1))?;
    Ok(ObjectId { bucket, key })
}

fn object_state(
    object: &Object<'_>,
    version_id: Option<String>,
) -> Result<ObjectState, ParseError> {
    if object.size.is_some_and(|size| size < 0) {
        let error = ParseError::WrongType("a size cannot be negative".to_string());
        return Err(ParseError::at("s3.object.size")(error));
    }
    let (user_metadata, system_metadata) = split_metadata(object)?;
    Ok(ObjectState {
        version_id,
        size: object.size,
        etag: optional_text(&object.e_tag)
            .map_err(ParseError::at("s3.object.eTag"))?
            .as_deref()
            .and_then(unquote_etag),
        content_type: optional_text(&object.content_type)
            .map_err(ParseError::at("s3.object.contentType"))?,
        user_metadata,
        system_metadata,
    })
}

/// An ETag without the double quotes S3 wraps it in (versitygw's events keep them, MinIO's
/// do not); an empty one is absent. Events and reads of the bucket go through it alike.
pub(crate) fn unquote_etag(etag: &str) -> Option<String> {
    let bare = etag
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(etag);
    (!bare.is_empty()).then(|| bare.to_string())
}

/// Splits an event's metadata into user and system entries (see [`split_entries`]): MinIO's
/// `userMetadata` map, or Ceph's `metadata` array, whose tags become the system entry
/// `x-amz-tagging` (`k=v&…`, query-escaped, in key order), as MinIO stores tags.
fn split_metadata(object: &Object<'_>) -> Result<(Metadata, Metadata), ParseError> {
    let sources = [
        ("s3.object.userMetadata", &object.user_metadata),
        ("s3.object.metadata", &object.metadata),
        ("s3.object.tags", &object.tags),
    ];
    for (field, metadata) in sources {
        if let Some((key, found)) = &metadata.not_text {
            let error = ParseError::NotString { found };
            return Err(ParseError::at(format!("{field}[{key:?}]"))(error));
        }
    }
    let tagging = tagging(&object.tags);
    let entries = object
        .user_metadata
        .iter()
        .chain(object.metadata.iter())
        .chain(tagging.as_deref().map(|tags| ("x-amz-tagging", tags)));
    split_entries(entries).map_err(|NulInMetadata { key }| {
        ParseError::at(format!("s3.object.userMetadata[{key:?}]"))(ParseError::NulCharacter)
    })
}

/// Ceph's tags in the form of the `x-amz-tagging` header; `None` without tags.
fn tagging(tags: &UserMetadata<'_>) -> Option<String> {
    let mut pairs: Vec<(&str, &str)> = tags.iter().collect();
    if pairs.is_empty() {
        return None;
    }
    pairs.sort_unstable();
    let encoded: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect();
    Some(encoded.join("&"))
}

/// A metadata entry holds a NUL character, which PostgreSQL text and jsonb cannot store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NulInMetadata<'a> {
    pub key: &'a str,
}

/// Splits metadata entries, as stored (`X-Amz-Meta-Id`, `content-type`, …), into user
/// (`x-amz-meta-*`, prefix matched in any letter case and stripped) and system entries, keys
/// lower-cased. The one metadata rule: a MinIO event's `userMetadata`, a MinIO listing's
/// `UserMetadata` and a HeadObject's headers all go through it, so that the same object
/// yields the same metadata whichever way it was read.
///
/// Keys that collide after lower-casing (`X-Amz-Meta-Id` and `x-amz-meta-id`) resolve the same
/// way whatever the input order: the value of the original key that sorts greatest in byte order
/// wins (for an exactly repeated key, the greatest value). Lower-casing is Unicode, like Go's
/// `strings.ToLower`.
pub(crate) fn split_entries<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(Metadata, Metadata), NulInMetadata<'a>> {
    let mut entries: Vec<(&str, &str)> = entries.into_iter().collect();
    entries.sort_unstable();
    let (mut user, mut system) = (BTreeMap::new(), BTreeMap::new());
    for (key, value) in entries {
        if key.contains('\0') || value.contains('\0') {
            return Err(NulInMetadata { key });
        }
        match strip_user_prefix(key) {
            Some(name) => user.insert(name.to_lowercase(), value),
            None => system.insert(key.to_lowercase(), value),
        };
    }
    Ok((
        Metadata::from_entries(&user),
        Metadata::from_entries(&system),
    ))
}

/// The rest of `key` after an `x-amz-meta-` prefix in any letter case.
fn strip_user_prefix(key: &str) -> Option<&str> {
    const PREFIX: &str = "x-amz-meta-";
    let head = key.get(..PREFIX.len())?;
    head.eq_ignore_ascii_case(PREFIX)
        .then(|| &key[PREFIX.len()..])
}

fn required_text(text: &str) -> Result<String, ParseError> {
    match optional_text(text)? {
        Some(text) => Ok(text),
        None => Err(ParseError::Missing),
    }
}

/// MinIO omits empty strings (Go `omitempty`), so an empty one means "absent" too.
fn optional_text(text: &str) -> Result<Option<String>, ParseError> {
    if text.is_empty() {
        return Ok(None);
    }
    no_nul(text)?;
    Ok(Some(text.to_string()))
}

fn no_nul(text: &str) -> Result<(), ParseError> {
    match text.contains('\0') {
        true => Err(ParseError::NulCharacter),
        false => Ok(()),
    }
}

/// MinIO prints `2006-01-02T15:04:05.000Z`; older releases had no fraction. Any RFC 3339 time
/// is accepted and normalised to UTC.
fn parse_event_time(text: &str) -> Result<OffsetDateTime, ParseError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|time| time.to_offset(UtcOffset::UTC))
        .map_err(|error| ParseError::BadEventTime {
            value: text.to_string(),
            reason: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use time::macros::datetime;

    const DOCS_PUT: &str = include_str!("../../tests/fixtures/minio-docs-kafka-put.json");

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    /// A valid single-record Put message as a JSON value, for tests to mutate.
    fn message() -> Value {
        json!({
            "EventName": "s3:ObjectCreated:Put",
            "Key": "bucket-a/dir/file one.txt",
            "Records": [record("s3:ObjectCreated:Put")],
        })
    }

    fn record(event_name: &str) -> Value {
        json!({
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2026-01-15T10:00:00.123Z",
            "eventName": event_name,
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.0.1"},
            "responseElements": {"x-amz-request-id": "188ADF2F9A6E0C15"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {"name": "bucket-a", "ownerIdentity": {"principalId": "minioadmin"}, "arn": "arn:aws:s3:::bucket-a"},
                "object": {
                    "key": "dir%2Ffile+one.txt",
                    "size": 42,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "contentType": "text/plain",
                    "userMetadata": {"X-Amz-Meta-Id": "1843", "content-type": "text/plain"},
                    "sequencer": "188ADF2F9A6E0C15"
                }
            },
            "source": {"host": "10.0.0.1", "port": "", "userAgent": "test"}
        })
    }

    fn parse_value(value: &Value) -> Result<Parsed, ParseError> {
        parse(Some(&serde_json::to_vec(value).unwrap()))
    }

    /// Parses `message()` after `edit` changed it.
    fn parse_edited(edit: impl FnOnce(&mut Value)) -> Result<Parsed, ParseError> {
        let mut value = message();
        edit(&mut value);
        parse_value(&value)
    }

    /// Sets (or adds) the object field at `pointer`.
    fn set(value: &mut Value, pointer: &str, new: Value) {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let parent = value.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        parent.insert(field.to_string(), new);
    }

    fn remove(value: &mut Value, pointer: &str) {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        value
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(field);
    }

    fn single(parsed: Parsed) -> Change {
        assert!(parsed.skipped.is_empty(), "{parsed:?}");
        assert_eq!(parsed.changes.len(), 1, "{parsed:?}");
        parsed.changes.into_iter().next().unwrap()
    }

    fn upsert(change: &Change) -> &ObjectState {
        match &change.action {
            Action::Upsert(state) => state,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    fn err(result: Result<Parsed, ParseError>) -> ParseError {
        result.expect_err("expected a parse error")
    }

    fn strings(pairs: &[(&str, &str)]) -> Value {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<String, Value>>()
            .into()
    }

    const OBJ: &str = "/Records/0/s3/object";

    #[test]
    fn parses_minio_documentation_example() {
        let change = single(parse(Some(DOCS_PUT.as_bytes())).unwrap());
        assert_eq!(
            change.object,
            ObjectId {
                bucket: "images".into(),
                key: "myphoto.jpg".into()
            }
        );
        assert_eq!(change.event_name, "s3:ObjectCreated:Put");
        assert_eq!(change.event_time, datetime!(2019-09-10 17:41:54 UTC));
        assert_eq!(change.sequencer, 0x15C3_2494_527B_46C5);
        let state = upsert(&change);
        assert_eq!(state.version_id.as_deref(), Some("1"));
        assert_eq!(state.size, Some(6474));
        assert_eq!(
            state.etag.as_deref(),
            Some("430f89010c77aa34fc8760696da62d08-1")
        );
        assert_eq!(state.content_type.as_deref(), Some("image/jpeg"));
        assert!(state.user_metadata.is_empty());
        assert_eq!(
            state.system_metadata.to_value(),
            strings(&[("content-type", "image/jpeg")])
        );
    }

    #[test]
    fn parses_put_fixture_with_metadata() {
        let change = single(parse(Some(&fixture("put_with_metadata.json"))).unwrap());
        assert_eq!(change.object.bucket, "test-bucket");
        assert_eq!(change.object.key, "test-file_apiid.txt");
        let state = upsert(&change);
        let user = strings(&[("api", "https://api.example.com/v1"), ("id", "1843")]);
        assert_eq!(state.user_metadata.to_value(), user);
        assert_eq!(
            state.system_metadata.to_value(),
            strings(&[("content-type", "text/plain")])
        );
        assert_eq!(state.version_id, None);
    }

    #[test]
    fn copy_fixture_is_newer_with_new_metadata() {
        let put = single(parse(Some(&fixture("put_with_metadata.json"))).unwrap());
        let copy = single(parse(Some(&fixture("copy_new_metadata.json"))).unwrap());
        assert_eq!(copy.event_name, "s3:ObjectCreated:Copy");
        assert_eq!(copy.object, put.object);
        assert!(copy.sequencer > put.sequencer);
        assert_eq!(upsert(&copy).user_metadata.to_value()["id"], json!("1844"));
    }

    #[test]
    fn delete_fixture_is_an_unconditional_newer_remove() {
        let copy = single(parse(Some(&fixture("copy_new_metadata.json"))).unwrap());
        let delete = single(parse(Some(&fixture("delete.json"))).unwrap());
        assert_eq!(delete.object, copy.object);
        assert!(delete.sequencer > copy.sequencer);
        let expected = Action::Remove {
            version_id: None,
            only_if_current_version: false,
        };
        assert_eq!(delete.action, expected);
    }

    #[test]
    fn multipart_fixture() {
        let change = single(parse(Some(&fixture("multipart.json"))).unwrap());
        assert_eq!(
            change.event_name,
            "s3:ObjectCreated:CompleteMultipartUpload"
        );
        let state = upsert(&change);
        assert!(state.size.unwrap() > 100 << 20);
        assert!(state.etag.as_deref().unwrap().ends_with("-3"));
    }

    #[test]
    fn escaped_key_fixture_decodes_to_the_envelope_key() {
        let bytes = fixture("escaped_key.json");
        let change = single(parse(Some(&bytes)).unwrap());
        assert_eq!(change.object.key, "dir one/a+b 100% ü.txt");
        let envelope: Value = serde_json::from_slice(&bytes).unwrap();
        let expected = format!("{}/{}", change.object.bucket, change.object.key);
        assert_eq!(envelope["Key"], json!(expected));
    }

    #[test]
    fn delete_marker_fixture_is_unconditional_with_its_version() {
        let change = single(parse(Some(&fixture("delete_marker.json"))).unwrap());
        assert_eq!(change.event_name, "s3:ObjectRemoved:DeleteMarkerCreated");
        match change.action {
            Action::Remove {
                version_id,
                only_if_current_version,
            } => {
                assert!(version_id.is_some());
                assert!(!only_if_current_version);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_fixture_is_skipped() {
        let parsed = parse(Some(&fixture("get.json"))).unwrap();
        assert!(parsed.changes.is_empty());
        assert_eq!(parsed.skipped, vec![EventFamily::Accessed]);
    }

    #[test]
    fn every_event_family() {
        let cases = [
            ("s3:ObjectCreated:Put", EventFamily::Created, "created"),
            (
                "s3:ObjectCreated:PutTagging",
                EventFamily::Created,
                "created",
            ),
            ("s3:ObjectRemoved:Delete", EventFamily::Removed, "removed"),
            (
                "s3:LifecycleDelMarkerExpiration:Delete",
                EventFamily::Removed,
                "removed",
            ),
            ("s3:ObjectAccessed:Head", EventFamily::Accessed, "accessed"),
            (
                "s3:ObjectReplication:OperationFailedReplication",
                EventFamily::Replication,
                "replication",
            ),
            (
                "s3:Replication:OperationCompletedReplication",
                EventFamily::Replication,
                "replication",
            ),
            (
                "s3:ObjectRestore:Completed",
                EventFamily::Restore,
                "restore",
            ),
            (
                "s3:ObjectTransition:Complete",
                EventFamily::Transition,
                "transition",
            ),
            ("s3:Scanner:ManyVersions", EventFamily::Scanner, "scanner"),
            ("s3:BucketCreated:*", EventFamily::Bucket, "bucket"),
            ("s3:BucketRemoved:*", EventFamily::Bucket, "bucket"),
            ("s3:SomethingNew:Thing", EventFamily::Other, "other"),
            ("s3:ObjectCreated", EventFamily::Other, "other"),
            ("ObjectCreated:Put", EventFamily::Created, "created"),
            (
                "ObjectRemoved:DeleteMarkerCreated",
                EventFamily::Removed,
                "removed",
            ),
            ("ObjectTagging:Put", EventFamily::Created, "created"),
            (
                "LifecycleExpiration:Delete",
                EventFamily::Removed,
                "removed",
            ),
            (
                "ObjectLifecycle:Expiration:Current",
                EventFamily::Removed,
                "removed",
            ),
            (
                "ObjectLifecycle:Expiration:AbortMPU",
                EventFamily::Other,
                "other",
            ),
            (
                "ObjectLifecycle:Transition:Current",
                EventFamily::Transition,
                "transition",
            ),
            (
                "ObjectSynced:Create",
                EventFamily::Replication,
                "replication",
            ),
            ("s3:TestEvent", EventFamily::Test, "test"),
            ("TestEvent", EventFamily::Test, "test"),
            ("garbage", EventFamily::Other, "other"),
        ];
        for (name, family, label) in cases {
            assert_eq!(EventFamily::of(name), family, "{name}");
            assert_eq!(family.label(), label);
        }
    }

    #[test]
    fn records_of_other_families_are_skipped() {
        for (name, family) in [
            ("s3:ObjectAccessed:Get", EventFamily::Accessed),
            (
                "s3:ObjectReplication:OperationReplicatedAfterThreshold",
                EventFamily::Replication,
            ),
            ("s3:ObjectRestore:Post", EventFamily::Restore),
            ("s3:ObjectTransition:Failed", EventFamily::Transition),
            ("s3:Scanner:BigPrefix", EventFamily::Scanner),
            ("s3:Future:Event", EventFamily::Other),
        ] {
            let parsed = parse_edited(|m| set(m, "/Records/0/eventName", json!(name))).unwrap();
            assert!(parsed.changes.is_empty(), "{name}");
            assert_eq!(parsed.skipped, vec![family], "{name}");
        }
    }

    #[test]
    fn bucket_event_without_object_is_skipped() {
        let parsed = parse_edited(|m| {
            set(m, "/Records/0/eventName", json!("s3:BucketCreated:*"));
            remove(m, "/Records/0/s3/object");
            set(m, "/Records/0/eventTime", json!(""));
        })
        .unwrap();
        assert_eq!(parsed.skipped, vec![EventFamily::Bucket]);
    }

    #[test]
    fn event_time_with_and_without_fraction() {
        for (text, expected) in [
            ("2019-09-10T17:41:54Z", datetime!(2019-09-10 17:41:54 UTC)),
            (
                "2019-09-10T17:41:54.123Z",
                datetime!(2019-09-10 17:41:54.123 UTC),
            ),
            (
                "2019-09-10T17:41:54.5Z",
                datetime!(2019-09-10 17:41:54.5 UTC),
            ),
            (
                "2019-09-10T17:41:54.123456789Z",
                datetime!(2019-09-10 17:41:54.123456789 UTC),
            ),
            (
                "2019-09-10T17:41:54.1234567891Z",
                datetime!(2019-09-10 17:41:54.123456789 UTC),
            ),
            (
                "2019-09-10T19:41:54+02:00",
                datetime!(2019-09-10 17:41:54 UTC),
            ),
        ] {
            let change =
                single(parse_edited(|m| set(m, "/Records/0/eventTime", json!(text))).unwrap());
            assert_eq!(change.event_time, expected, "{text}");
            assert_eq!(change.event_time.offset(), UtcOffset::UTC);
        }
    }

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(query_escape("a b+c/d%e~f*ü"), "a+b%2Bc%2Fd%25e~f%2A%C3%BC");
        assert_eq!(
            query_escape("dir one/a+b 100% ü.txt"),
            "dir+one%2Fa%2Bb+100%25+%C3%BC.txt"
        );
        assert_eq!(query_escape("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(
            query_escape("!'()*:;=?@[]&$,#\""),
            "%21%27%28%29%2A%3A%3B%3D%3F%40%5B%5D%26%24%2C%23%22"
        );
        assert_eq!(query_escape("日本"), "%E6%97%A5%E6%9C%AC");
        assert_eq!(query_escape(""), "");
    }

    #[test]
    fn query_unescape_matches_go() {
        assert_eq!(
            query_unescape("a+b%2Bc%2Fd%25e~f%2A%C3%BC").unwrap(),
            "a b+c/d%e~f*ü"
        );
        assert_eq!(query_unescape("%c3%bc").unwrap(), "ü");
        assert_eq!(query_unescape("plain/key.txt").unwrap(), "plain/key.txt");
        assert_eq!(query_unescape("a/b c").unwrap(), "a/b c");
        for (bad, escape) in [
            ("%zz", "%zz"),
            ("a%", "%"),
            ("a%4", "%4"),
            ("%4g-tail", "%4g"),
            ("%é", "%é"),
            ("%aé", "%a\u{fffd}"),
        ] {
            match query_unescape(bad) {
                Err(ParseError::InvalidEscape { escape: got }) => assert_eq!(got, escape, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(query_unescape("%C3"), Err(ParseError::NotUtf8)));
        assert!(matches!(query_unescape("%FF%FE"), Err(ParseError::NotUtf8)));
        assert_eq!(
            query_unescape("%zz").unwrap_err().to_string(),
            "invalid escape \"%zz\""
        );
    }

    #[test]
    fn escaping_round_trips() {
        let mut all_ascii: String = (1u8..128).map(char::from).collect();
        all_ascii.push_str(" ü é 日本語 🎉 100% a+b ");
        for name in [
            all_ascii.as_str(),
            "dir one/a+b 100% ü.txt",
            "+",
            "%",
            " ",
            "%2B",
            "",
        ] {
            assert_eq!(query_unescape(&query_escape(name)).unwrap(), name);
        }
    }

    #[test]
    fn escaped_keys_are_decoded_in_records() {
        for (escaped, raw) in [
            (
                "dir+one%2Fa%2Bb+100%25+%C3%BC.txt",
                "dir one/a+b 100% ü.txt",
            ),
            ("photos/2026/a.jpg", "photos/2026/a.jpg"),
            ("%E6%97%A5%E6%9C%AC.txt", "日本.txt"),
        ] {
            let change =
                single(parse_edited(|m| set(m, &format!("{OBJ}/key"), json!(escaped))).unwrap());
            assert_eq!(change.object.key, raw);
        }
    }

    #[test]
    fn bad_escape_in_key_names_record_and_field() {
        let error = err(parse_edited(|m| {
            set(m, &format!("{OBJ}/key"), json!("a%zzb"))
        }));
        assert_eq!(
            error.to_string(),
            "record 0: s3.object.key: invalid escape \"%zz\""
        );
        assert_eq!(error.label(), "bad_key");
        let error = err(parse_edited(|m| {
            set(m, &format!("{OBJ}/key"), json!("%FF"))
        }));
        assert_eq!(error.label(), "bad_key");
    }

    #[test]
    fn empty_payloads() {
        for payload in [None, Some(&b""[..]), Some(&b" \n\t"[..])] {
            let error = err(parse(payload));
            assert!(matches!(error, ParseError::Empty), "{error:?}");
            assert_eq!(error.label(), "empty");
        }
    }

    #[test]
    fn invalid_json_and_invalid_utf8() {
        for payload in [
            &b"{"[..],
            b"{\"Records\": [}",
            b"not json",
            b"{\"Records\": []} trailing",
            b"{\"Key\": \"\xff\xfe\", \"Records\": []}",
        ] {
            let error = err(parse(Some(payload)));
            assert_eq!(error.label(), "invalid_json", "{error}");
            assert!(error.to_string().starts_with("invalid JSON: "), "{error}");
        }
    }

    #[test]
    fn documents_that_are_not_s3_events() {
        for payload in [
            &b"[]"[..],
            b"5",
            b"\"text\"",
            b"null",
            b"{}",
            b"{\"EventName\": \"s3:ObjectCreated:Put\"}",
            b"{\"Records\": null}",
            b"{\"Records\": {}}",
            b"{\"Event\": \"s3:SomethingElse\"}",
            b"{\"source\": \"aws.ec2\", \"detail\": {}}",
        ] {
            let error = err(parse(Some(payload)));
            assert_eq!(
                error.label(),
                "not_s3_event",
                "{}: {error}",
                String::from_utf8_lossy(payload)
            );
        }
        let error = err(parse(Some(b"{\"Key\": \"a/b\"}")));
        assert!(error.to_string().contains("no \"Records\""), "{error}");
    }

    #[test]
    fn empty_records_array() {
        let error = err(parse(Some(
            b"{\"EventName\": \"s3:ObjectCreated:Put\", \"Records\": []}",
        )));
        assert!(matches!(error, ParseError::NoRecords));
        assert_eq!(error.label(), "no_records");
    }

    #[test]
    fn record_that_is_not_an_object() {
        let error = err(parse_edited(|m| {
            m["Records"].as_array_mut().unwrap().push(json!("x"))
        }));
        assert_eq!(error.label(), "bad_field");
        assert!(
            error
                .to_string()
                .starts_with("record 1: invalid type: string \"x\""),
            "{error}"
        );
    }

    #[test]
    fn missing_or_empty_bucket_and_key() {
        let cases: [(&str, bool, &str); 4] = [
            ("/Records/0/s3/bucket/name", true, "s3.bucket.name"),
            ("/Records/0/s3/bucket/name", false, "s3.bucket.name"),
            ("/Records/0/s3/object/key", true, "s3.object.key"),
            ("/Records/0/s3/object/key", false, "s3.object.key"),
        ];
        for (pointer, missing, field) in cases {
            for name in ["s3:ObjectCreated:Put", "s3:ObjectRemoved:Delete"] {
                let error = err(parse_edited(|m| {
                    set(m, "/Records/0/eventName", json!(name));
                    if missing {
                        remove(m, pointer)
                    } else {
                        set(m, pointer, json!(""))
                    }
                }));
                assert_eq!(
                    error.to_string(),
                    format!("record 0: {field}: missing or empty")
                );
                assert_eq!(error.label(), "missing_field");
            }
        }
        let error = err(parse_edited(|m| remove(m, "/Records/0/s3")));
        assert_eq!(error.label(), "missing_field");
    }

    #[test]
    fn wrong_json_types() {
        for (pointer, value) in [
            ("/Records/0/s3/object/size", json!(4.5)),
            ("/Records/0/s3/object/size", json!([42])),
            ("/Records/0/s3/object/eTag", json!(7)),
            ("/Records/0/s3/object/userMetadata", json!(["a"])),
            ("/Records/0/s3/bucket", json!("bucket-a")),
            ("/Records/0/eventName", json!(7)),
        ] {
            let error = err(parse_edited(|m| set(m, pointer, value.clone())));
            assert_eq!(error.label(), "bad_field", "{pointer}: {error}");
            assert!(
                error.to_string().starts_with("record 0: invalid type"),
                "{error}"
            );
        }
        let error = err(parse_edited(|m| set(m, &format!("{OBJ}/size"), json!(-1))));
        assert_eq!(
            error.to_string(),
            "record 0: s3.object.size: a size cannot be negative"
        );
    }

    #[test]
    fn sequencers() {
        for (text, expected) in [
            ("188ADF2F9A6E0C15", 0x188A_DF2F_9A6E_0C15_i64),
            ("188adf2f9a6e0c15", 0x188A_DF2F_9A6E_0C15),
            ("1", 1),
            ("0007FFFFFFFFFFFFFFF", i64::MAX),
        ] {
            let change =
                single(parse_edited(|m| set(m, &format!("{OBJ}/sequencer"), json!(text))).unwrap());
            assert_eq!(change.sequencer, expected, "{text}");
        }
        for (text, reason) in [
            ("", "empty"),
            ("12G4", "not hexadecimal"),
            ("+12", "not hexadecimal"),
            ("-12", "not hexadecimal"),
            (" 12", "not hexadecimal"),
            ("8000000000000000", "greater than i64::MAX"),
            ("FFFFFFFFFFFFFFFFFF", "greater than i64::MAX"),
        ] {
            let error = err(parse_edited(|m| {
                set(m, &format!("{OBJ}/sequencer"), json!(text))
            }));
            assert_eq!(error.label(), "bad_sequencer", "{text}");
            let expected =
                format!("record 0: s3.object.sequencer: {text:?} is not a sequencer: {reason}");
            assert_eq!(error.to_string(), expected);
        }
        let error = err(parse_edited(|m| remove(m, &format!("{OBJ}/sequencer"))));
        assert_eq!(error.label(), "bad_sequencer");
    }

    #[test]
    fn bad_event_times() {
        for text in [
            "",
            "2019-09-10T17:41:54",
            "yesterday",
            "2019-13-10T17:41:54Z",
        ] {
            let error = err(parse_edited(|m| {
                set(m, "/Records/0/eventTime", json!(text))
            }));
            assert_eq!(error.label(), "bad_event_time", "{text}");
            assert!(
                error.to_string().starts_with("record 0: eventTime: "),
                "{error}"
            );
        }
    }

    #[test]
    fn event_names_without_the_s3_prefix_are_stored_with_it() {
        let change = single(
            parse_edited(|m| set(m, "/Records/0/eventName", json!("ObjectCreated:Put"))).unwrap(),
        );
        assert_eq!(change.event_name, "s3:ObjectCreated:Put");
        for edit in [
            Box::new(|m: &mut Value| set(m, "/Records/0/eventName", json!("")))
                as Box<dyn Fn(&mut Value)>,
            Box::new(|m: &mut Value| set(m, "/Records/0/eventName", json!(null))),
            Box::new(|m: &mut Value| remove(m, "/Records/0/eventName")),
        ] {
            let error = err(parse_edited(edit));
            assert_eq!(error.label(), "missing_field");
            assert_eq!(error.to_string(), "record 0: eventName: missing or empty");
        }
    }

    #[test]
    fn an_unknown_event_source_is_refused_unless_the_source_is_forced() {
        let edit = |m: &mut Value| {
            remove(m, "/EventName");
            remove(m, "/Key");
            set(m, "/Records/0/eventSource", json!("garage:s3"));
        };
        let error = err(parse_edited(edit));
        assert_eq!(error.label(), "not_s3_event");
        assert!(error.to_string().starts_with("record 0: eventSource: "));
        let mut value = message();
        edit(&mut value);
        let forced = Decoding {
            source: SourceChoice::Only(Store::Minio),
            ..Decoding::default()
        };
        let parsed = parse_with(Some(&serde_json::to_vec(&value).unwrap()), &forced).unwrap();
        assert_eq!(
            parsed.seen,
            vec![(Some(Store::Minio), EventFamily::Created)]
        );
        // A record that changes no rows needs no known source.
        let parsed = parse_edited(|m| {
            edit(m);
            set(m, "/Records/0/eventName", json!("s3:ObjectAccessed:Get"));
        })
        .unwrap();
        assert_eq!(parsed.seen, vec![(None, EventFamily::Accessed)]);
    }

    #[test]
    fn nul_characters_are_rejected() {
        let cases = [
            (
                "/Records/0/s3/bucket/name",
                json!("bu\u{0}cket"),
                "s3.bucket.name",
            ),
            ("/Records/0/s3/object/key", json!("a%00b"), "s3.object.key"),
            (
                "/Records/0/s3/object/key",
                json!("a\u{0}b"),
                "s3.object.key",
            ),
            (
                "/Records/0/eventName",
                json!("s3:ObjectCreated:P\u{0}t"),
                "eventName",
            ),
            (
                "/Records/0/s3/object/versionId",
                json!("v\u{0}1"),
                "s3.object.versionId",
            ),
            (
                "/Records/0/s3/object/eTag",
                json!("e\u{0}"),
                "s3.object.eTag",
            ),
            (
                "/Records/0/s3/object/contentType",
                json!("text/\u{0}"),
                "s3.object.contentType",
            ),
            (
                "/Records/0/s3/object/userMetadata",
                json!({"X-Amz-Meta-\u{0}": "v"}),
                "s3.object.userMetadata[\"X-Amz-Meta-\\0\"]",
            ),
            (
                "/Records/0/s3/object/userMetadata",
                json!({"X-Amz-Meta-Id": "1\u{0}"}),
                "s3.object.userMetadata[\"X-Amz-Meta-Id\"]",
            ),
        ];
        for (pointer, value, field) in cases {
            let error = err(parse_edited(|m| set(m, pointer, value.clone())));
            assert_eq!(error.label(), "nul_character", "{pointer}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("record 0: {field}: contains a NUL")),
                "{error}"
            );
        }
        let error = err(parse_edited(|m| {
            set(m, "/Records/0/eventName", json!("s3:ObjectRemoved:Delete"));
            set(m, &format!("{OBJ}/key"), json!("%00"));
        }));
        assert_eq!(error.label(), "nul_character");
    }

    #[test]
    fn metadata_values_must_be_strings() {
        for (value, found) in [
            (json!(5), "a number"),
            (json!(1.5), "a number"),
            (json!(true), "a boolean"),
            (json!(null), "null"),
            (json!({"a": [1]}), "an object"),
            (json!(["a"]), "an array"),
        ] {
            let error = err(parse_edited(|m| {
                let meta = json!({"X-Amz-Meta-Api": "https://x", "X-Amz-Meta-Id": value, "X-Amz-Meta-Z": "z"});
                set(m, &format!("{OBJ}/userMetadata"), meta);
            }));
            assert_eq!(error.label(), "bad_metadata");
            let expected = format!("record 0: s3.object.userMetadata[\"X-Amz-Meta-Id\"]: value must be a string, found {found}");
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn metadata_split_and_lower_casing() {
        let meta = json!({
            "X-Amz-Meta-Api": "https://api.example.com/v1",
            "x-amz-meta-Owner": "alice",
            "X-AMZ-META-Mixed-Case": "M",
            "content-type": "text/plain",
            "Cache-Control": "no-cache",
            "X-Amz-Tagging": "a=b",
            "x-amz-meta-": "empty name",
        });
        let change =
            single(parse_edited(|m| set(m, &format!("{OBJ}/userMetadata"), meta)).unwrap());
        let state = upsert(&change);
        let user = [
            ("api", "https://api.example.com/v1"),
            ("owner", "alice"),
            ("mixed-case", "M"),
            ("", "empty name"),
        ];
        assert_eq!(state.user_metadata.to_value(), strings(&user));
        let system = [
            ("content-type", "text/plain"),
            ("cache-control", "no-cache"),
            ("x-amz-tagging", "a=b"),
        ];
        assert_eq!(state.system_metadata.to_value(), strings(&system));
    }

    #[test]
    fn metadata_collisions_resolve_by_greatest_original_key() {
        let orders = [
            r#"{"X-Amz-Meta-Id": "upper", "x-amz-meta-id": "lower", "Content-Type": "A", "content-type": "b"}"#,
            r#"{"content-type": "b", "x-amz-meta-id": "lower", "Content-Type": "A", "X-Amz-Meta-Id": "upper"}"#,
        ];
        for order in orders {
            let meta: Value = serde_json::from_str(order).unwrap();
            let change =
                single(parse_edited(|m| set(m, &format!("{OBJ}/userMetadata"), meta)).unwrap());
            let state = upsert(&change);
            // "x-amz-meta-id" > "X-Amz-Meta-Id" and "content-type" > "Content-Type" in byte order.
            assert_eq!(state.user_metadata.to_value(), strings(&[("id", "lower")]));
            assert_eq!(
                state.system_metadata.to_value(),
                strings(&[("content-type", "b")])
            );
        }
        for order in [r#"{"Id": "1", "Id": "2"}"#, r#"{"Id": "2", "Id": "1"}"#] {
            let text = serde_json::to_string(&message()).unwrap().replace(
                r#"{"X-Amz-Meta-Id":"1843","content-type":"text/plain"}"#,
                order,
            );
            let change = single(parse(Some(text.as_bytes())).unwrap());
            assert_eq!(
                upsert(&change).system_metadata.to_value(),
                strings(&[("id", "2")])
            );
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_empty() {
        let change = single(
            parse_edited(|m| {
                for field in ["size", "eTag", "contentType", "userMetadata"] {
                    remove(m, &format!("{OBJ}/{field}"));
                }
                set(m, &format!("{OBJ}/versionId"), json!(""));
            })
            .unwrap(),
        );
        assert_eq!(upsert(&change), &ObjectState::default());
        let change =
            single(parse_edited(|m| set(m, &format!("{OBJ}/userMetadata"), json!(null))).unwrap());
        assert!(upsert(&change).system_metadata.is_empty());
    }

    #[test]
    fn multiple_records_are_all_accepted() {
        let mut second = record("s3:ObjectRemoved:Delete");
        set(&mut second, "/s3/object/key", json!("other.txt"));
        set(
            &mut second,
            "/s3/object/sequencer",
            json!("188ADF2F9A6E0C16"),
        );
        let value = json!({"Records": [record("s3:ObjectCreated:Put"), record("s3:ObjectAccessed:Get"), second]});
        let parsed = parse_value(&value).unwrap();
        assert_eq!(parsed.skipped, vec![EventFamily::Accessed]);
        assert_eq!(parsed.changes.len(), 2);
        assert_eq!(parsed.changes[0].object.key, "dir/file one.txt");
        assert_eq!(parsed.changes[1].object.key, "other.txt");
        assert!(matches!(parsed.changes[1].action, Action::Remove { .. }));
        // Each change knows its own record, skipped records included in the count.
        let records: Vec<u32> = parsed.changes.iter().map(|c| c.record).collect();
        assert_eq!(records, vec![0, 2]);
    }

    #[test]
    fn an_invalid_record_fails_the_message_and_names_its_index() {
        let mut bad = record("s3:ObjectCreated:Put");
        set(&mut bad, "/s3/object/sequencer", json!("xyz"));
        let value = json!({"Records": [record("s3:ObjectCreated:Put"), record("s3:ObjectCreated:Put"), bad]});
        let error = err(parse_value(&value));
        assert!(
            error
                .to_string()
                .starts_with("record 2: s3.object.sequencer: "),
            "{error}"
        );
        let mut bad = record("s3:ObjectCreated:Put");
        set(&mut bad, "/s3/object/size", json!(true));
        let error = err(parse_value(
            &json!({"Records": [record("s3:ObjectCreated:Put"), bad]}),
        ));
        assert!(
            error.to_string().starts_with("record 1: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_envelope_is_informational() {
        let change = single(
            parse_edited(|m| {
                m["Extra"] = json!({"nested": [1, 2, {"x": null}]});
                m["EventName"] = json!("s3:ObjectRemoved:Delete");
                m["Key"] = json!("somewhere/else");
                m["Records"][0]["newField"] = json!(["x"]);
                m["Records"][0]["s3"]["future"] = json!(1);
                m["Records"][0]["s3"]["object"]["checksum"] = json!({"crc32": "abc"});
                m["Records"][0]["s3"]["bucket"]["region"] = json!(null);
                m["Records"][0]["awsRegion"] = json!(17);
            })
            .unwrap(),
        );
        assert_eq!(change.event_name, "s3:ObjectCreated:Put");
        assert_eq!(change.object.key, "dir/file one.txt");
    }

    #[test]
    fn removals_with_and_without_version() {
        let cases = [
            ("s3:ObjectRemoved:Delete", Some("v1"), true),
            ("s3:ObjectRemoved:Delete", None, false),
            ("s3:ObjectRemoved:DeleteMarkerCreated", Some("dm1"), false),
            ("s3:ObjectRemoved:DeleteAllVersions", Some("v1"), false),
            ("s3:ObjectRemoved:NoOP", None, false),
            ("s3:LifecycleDelMarkerExpiration:Delete", Some("dm1"), false),
        ];
        for (name, version, conditional) in cases {
            let change = single(
                parse_edited(|m| {
                    set(m, "/Records/0/eventName", json!(name));
                    let object = m.pointer_mut(OBJ).unwrap().as_object_mut().unwrap();
                    object.retain(|k, _| k == "key" || k == "sequencer");
                    if let Some(version) = version {
                        object.insert("versionId".into(), json!(version));
                    }
                })
                .unwrap(),
            );
            let expected = Action::Remove {
                version_id: version.map(str::to_string),
                only_if_current_version: conditional,
            };
            assert_eq!(change.action, expected, "{name}");
        }
    }

    #[test]
    fn wire_structs_serialize_like_minio() {
        let object = Object {
            key: "a+b".into(),
            size: Some(0),
            sequencer: "1".into(),
            ..Object::default()
        };
        let json = serde_json::to_string(&object).unwrap();
        assert_eq!(json, r#"{"key":"a+b","sequencer":"1"}"#);
        let value: Value = serde_json::from_slice(&fixture("put_with_metadata.json")).unwrap();
        let text = value["Records"][0].to_string();
        let mut record: Record<'_> = serde_json::from_str(&text).unwrap();
        record.event_version = "2.0".into();
        let envelope = Envelope {
            event_name: "s3:ObjectCreated:Put".into(),
            key: "k".into(),
            records: vec![record],
        };
        let text = serde_json::to_string(&envelope).unwrap();
        let order = [
            "\"EventName\"",
            "\"Key\"",
            "\"Records\"",
            "\"eventVersion\"",
            "\"eventSource\"",
            "\"awsRegion\"",
            "\"eventTime\"",
            "\"eventName\"",
            "\"userIdentity\"",
            "\"requestParameters\"",
            "\"responseElements\"",
            "\"s3SchemaVersion\"",
            "\"configurationId\"",
            "\"bucket\"",
            "\"name\"",
            "\"ownerIdentity\"",
            "\"arn\"",
            "\"object\"",
            "\"key\"",
            "\"size\"",
            "\"eTag\"",
            "\"contentType\"",
            "\"userMetadata\"",
            "\"X-Amz-Meta-Api\"",
            "\"X-Amz-Meta-Id\"",
            "\"content-type\"",
            "\"sequencer\"",
            "\"source\"",
            "\"host\"",
            "\"port\"",
            "\"userAgent\"",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|f| text.find(f).unwrap_or_else(|| panic!("{f} in {text}")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(!text.contains("versionId"));
        let change = single(parse(Some(text.as_bytes())).unwrap());
        assert_eq!(
            upsert(&change).user_metadata.to_value()["id"],
            json!("1843")
        );
    }

    #[test]
    fn user_metadata_is_written_sorted() {
        let metadata: UserMetadata<'_> = [("content-type", "text/plain"), ("X-Amz-Meta-Id", "1")]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&metadata).unwrap();
        assert_eq!(json, r#"{"X-Amz-Meta-Id":"1","content-type":"text/plain"}"#);
        assert_eq!(metadata.iter().count(), 2);
    }

    #[test]
    fn borrowed_strings_avoid_copies() {
        let bytes = fixture("put_with_metadata.json");
        let records = deserialize_document(&bytes).unwrap().records.unwrap();
        assert!(matches!(records[0].s3.object.key, Cow::Borrowed(_)));
        assert!(matches!(
            records[0].s3.object.user_metadata.entries[0].1,
            Cow::Borrowed(_)
        ));
        assert!(matches!(records[0].event_name, Cow::Borrowed(_)));
    }

    /// The change of a fixture under `tests/fixtures/sources/`.
    fn source_change(name: &str) -> Change {
        source_change_of(&format!("sources/{name}"))
    }

    #[test]
    fn ceph_records_decode_raw_keys_metadata_arrays_tags_and_sequencers() {
        let change = source_change("ceph-put.json");
        assert_eq!(change.object.bucket, "ceph-bucket");
        assert_eq!(
            change.object.key, "dir one/a+b 100%.txt",
            "Ceph keys are raw"
        );
        assert_eq!(change.event_name, "s3:ObjectCreated:Put");
        assert_eq!(change.sequencer, 1_700_000_000_123_456_789);
        assert_eq!(change.basis, Basis::Event, "Ceph's events are the state");
        let state = upsert(&change);
        assert_eq!(state.size, Some(5), "a size given as a string");
        assert_eq!(state.version_id, None, "an empty versionId is no version");
        assert_eq!(
            state.user_metadata.to_value(),
            strings(&[("api", "https://api.example.com/v1"), ("id", "1843")])
        );
        assert_eq!(
            state.system_metadata.to_value(),
            strings(&[("x-amz-tagging", "team=data+eng")])
        );
        let copy = source_change("ceph-copy.json");
        assert!(
            copy.sequencer > change.sequencer,
            "decoded, not compared as text"
        );
        assert_eq!(upsert(&copy).user_metadata.to_value()["id"], json!("1844"));
        let delete = source_change("ceph-delete.json");
        assert_eq!(delete.event_name, "s3:ObjectRemoved:Delete");
        assert!(matches!(delete.action, Action::Remove { .. }));
    }

    #[test]
    fn rustfs_records_are_minio_shaped_with_their_own_source() {
        let parsed = parse(Some(&fixture("sources/rustfs-put.json"))).unwrap();
        assert_eq!(
            parsed.seen,
            vec![(Some(Store::Rustfs), EventFamily::Created)]
        );
        let change = single(parsed);
        assert_eq!(change.object.key, "dir/a b+c.txt");
        assert_eq!(change.sequencer, 0x1797_9CFE_3D85_CD15);
        assert_eq!(change.basis, Basis::Event);
        assert_eq!(
            upsert(&change).user_metadata.to_value(),
            strings(&[("id", "1843")])
        );
    }

    #[test]
    fn aws_records_are_hints_with_form_decoded_keys() {
        let parsed = parse(Some(&fixture("sources/aws-put.json"))).unwrap();
        assert_eq!(parsed.seen, vec![(Some(Store::Aws), EventFamily::Created)]);
        let change = single(parsed);
        assert_eq!(change.object.key, "dir/red flower+1.jpg");
        assert_eq!(change.event_name, "s3:ObjectCreated:Put");
        assert_eq!(change.basis, Basis::Hint, "AWS sends no metadata");
        assert_eq!(upsert(&change).version_id, None, "versionId null");
        let delete = source_change("aws-delete.json");
        assert!(
            delete.sequencer > change.sequencer,
            "18 digits, compared on 15"
        );
        assert_eq!(delete.basis, Basis::Hint);
        let never = Decoding {
            enrich: Enrich::Never,
            ..Decoding::default()
        };
        let parsed = parse_with(Some(&fixture("sources/aws-put.json")), &never).unwrap();
        assert_eq!(single(parsed).basis, Basis::Event);
    }

    #[test]
    fn eventbridge_events_are_named_like_records_and_are_hints() {
        let created = source_change("eventbridge-created.json");
        assert_eq!(created.object.bucket, "aws-bucket");
        assert_eq!(created.object.key, "dir/red flower+1.jpg");
        assert_eq!(created.event_name, "s3:ObjectCreated:Copy");
        assert_eq!(created.event_time, datetime!(2026-01-15 10:00:01 UTC));
        assert_eq!(created.basis, Basis::Hint);
        let put = source_change("aws-put.json");
        assert!(created.sequencer > put.sequencer);
        let deleted = source_change("eventbridge-deleted.json");
        assert_eq!(deleted.event_name, "s3:ObjectRemoved:Delete");
        assert!(matches!(deleted.action, Action::Remove { .. }));
        let marker = parse_value(&json!({
            "detail-type": "Object Deleted", "source": "aws.s3", "time": "2026-01-15T10:00:06Z",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "k", "sequencer": "01"},
                       "reason": "DeleteObject", "deletion-type": "Delete Marker Created"}
        }))
        .unwrap();
        assert_eq!(
            single(marker).event_name,
            "s3:ObjectRemoved:DeleteMarkerCreated"
        );
        let restore = parse_value(&json!({
            "detail-type": "Object Restore Completed", "source": "aws.s3",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "k"}}
        }))
        .unwrap();
        assert!(restore.changes.is_empty());
        assert_eq!(restore.skipped, vec![EventFamily::Other]);
    }

    #[test]
    fn test_messages_are_counted_not_dead_lettered() {
        let aws = parse(Some(&fixture("sources/aws-test-event.json"))).unwrap();
        assert!(aws.changes.is_empty());
        assert_eq!(aws.skipped, vec![EventFamily::Test]);
        assert_eq!(aws.seen, vec![(Some(Store::Aws), EventFamily::Test)]);
        let versitygw = parse(Some(
            br#"{"Bucket":"Test-Bucket","Event":"s3:TestEvent","Service":"S3","Time":"2026-01-15T10:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(
            versitygw.seen,
            vec![(Some(Store::Versitygw), EventFamily::Test)]
        );
    }

    #[test]
    fn versitygw_records_are_hints_with_raw_keys_null_versions_and_quoted_etags() {
        let value = json!({"Records": [{
            "eventVersion": "2.2", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-01-15T11:00:00+01:00", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"PrincipalId": "admin"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "webhook-global",
                   "bucket": {"name": "b", "arn": "arn:aws:s3:::/b/a+b"},
                   "object": {"key": "a+b", "size": 5, "eTag": "\"5d41402abc4b2a76b9719d911017c592\"",
                              "versionId": null, "sequencer": "1A"}},
            "glacierEventData": {"restoreEventData": {"lifecycleRestorationExpiryTime": ""}}
        }]});
        let parsed = parse_value(&value).unwrap();
        assert_eq!(
            parsed.seen,
            vec![(Some(Store::Versitygw), EventFamily::Created)]
        );
        let change = single(parsed);
        assert_eq!(change.object.key, "a+b", "a plus stays a plus");
        assert_eq!(change.basis, Basis::Hint);
        assert_eq!(change.event_time, datetime!(2026-01-15 10:00:00 UTC));
        assert_eq!(change.sequencer, 1_768_471_200_000_000_026);
        let state = upsert(&change);
        assert_eq!(
            state.etag.as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(state.version_id, None);
    }

    #[test]
    fn etags_lose_their_quotes_only() {
        assert_eq!(unquote_etag("\"abc\"").as_deref(), Some("abc"));
        assert_eq!(unquote_etag("abc").as_deref(), Some("abc"));
        assert_eq!(unquote_etag("\"abc-2\"").as_deref(), Some("abc-2"));
        assert_eq!(unquote_etag("\"abc").as_deref(), Some("\"abc"));
        assert_eq!(unquote_etag("\"\""), None);
        assert_eq!(unquote_etag(""), None);
    }

    #[test]
    fn every_message_a_real_versitygw_sent_parses() {
        let dir = format!("{}/tests/fixtures/versitygw", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".json"))
            .collect();
        names.sort();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            let parsed = parse(Some(&fixture(&format!("versitygw/{name}"))))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.starts_with("test-event") {
                assert_eq!(parsed.skipped, vec![EventFamily::Test], "{name}");
                continue;
            }
            let change = single(parsed);
            assert_eq!(change.basis, Basis::Hint, "{name}");
            assert_eq!(change.object.bucket, "capture-bucket", "{name}");
        }
        let odd = source_change_of("versitygw/put-odd-key-plus.json");
        assert_eq!(odd.object.key, "a+b");
        let tagging = source_change_of("versitygw/tagging.json");
        assert_eq!(tagging.event_name, "s3:ObjectTagging:Put");
        let objects = source_change_of("versitygw/delete-objects.json");
        assert!(matches!(objects.action, Action::Remove { .. }));
    }

    fn source_change_of(path: &str) -> Change {
        single(parse(Some(&fixture(path))).unwrap())
    }
}
