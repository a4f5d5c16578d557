//! The wire model: MinIO's Go structs, in Go's field order, with `omitempty`
//! where Go has it, plus what other stores add (Ceph's metadata arrays, EventBridge's
//! `detail`). Fields marked `skip_deserializing` are written by `produce` but never read
//! by `parse`; fields marked `skip_serializing` are read but never written. A JSON `null`
//! is read as an absent value wherever a string is usual (versitygw's `versionId`).

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

/// The Kafka message value: Go's `event.Log`. `parse` reads only `Records` (the record is the
/// truth; `EventName` and `Key` are informational), so this type is only serialized.
#[derive(Clone, Debug, Serialize)]
pub struct Envelope<'a> {
    #[serde(rename = "EventName")]
    pub event_name: Cow<'a, str>,
    /// `<bucket>/<raw object name>`, unescaped.
    #[serde(rename = "Key")]
    pub key: Cow<'a, str>,
    #[serde(rename = "Records")]
    pub records: Vec<Record<'a>>,
}

/// One event: Go's `event.Event`. Go's maps serialize with sorted keys, hence `BTreeMap`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    #[serde(skip_deserializing)]
    pub event_version: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub event_source: Cow<'a, str>,
    #[serde(skip_deserializing)]
    pub aws_region: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub event_time: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub event_name: Cow<'a, str>,
    #[serde(skip_deserializing)]
    pub user_identity: Identity<'a>,
    #[serde(skip_deserializing)]
    pub request_parameters: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(skip_deserializing)]
    pub response_elements: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow, default)]
    pub s3: S3<'a>,
    #[serde(skip_deserializing)]
    pub source: Source<'a>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity<'a> {
    pub principal_id: Cow<'a, str>,
}

/// Go's `event.Metadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct S3<'a> {
    #[serde(rename = "s3SchemaVersion", skip_deserializing)]
    pub schema_version: Cow<'a, str>,
    #[serde(rename = "configurationId", skip_deserializing)]
    pub configuration_id: Cow<'a, str>,
    #[serde(borrow, default)]
    pub bucket: Bucket<'a>,
    #[serde(borrow, default)]
    pub object: Object<'a>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub name: Cow<'a, str>,
    #[serde(skip_deserializing)]
    pub owner_identity: Identity<'a>,
    #[serde(skip_deserializing)]
    pub arn: Cow<'a, str>,
}

/// Go's `event.Object`. `key` is escaped on the wire or not, depending on the store
/// (`Store::decode_key`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub key: Cow<'a, str>,
    /// Go omits a zero size, so `Some(0)` is not written either. Ceph may send it as a
    /// string of digits.
    #[serde(
        default,
        skip_serializing_if = "size_is_omitted",
        deserialize_with = "size"
    )]
    pub size: Option<i64>,
    #[serde(
        rename = "eTag",
        borrow,
        default,
        skip_serializing_if = "str::is_empty",
        deserialize_with = "nullable"
    )]
    pub e_tag: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        skip_serializing_if = "str::is_empty",
        deserialize_with = "nullable"
    )]
    pub content_type: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "UserMetadata::is_empty")]
    pub user_metadata: UserMetadata<'a>,
    /// Ceph's metadata: `[{"key": "x-amz-meta-id", "val": "1843"}, …]`.
    #[serde(borrow, default, skip_serializing, deserialize_with = "entry_array")]
    pub metadata: UserMetadata<'a>,
    /// Ceph's object tags, in the same shape.
    #[serde(borrow, default, skip_serializing, deserialize_with = "entry_array")]
    pub tags: UserMetadata<'a>,
    #[serde(
        borrow,
        default,
        skip_serializing_if = "str::is_empty",
        deserialize_with = "nullable"
    )]
    pub version_id: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub sequencer: Cow<'a, str>,
}

fn size_is_omitted(size: &Option<i64>) -> bool {
    size.is_none_or(|size| size == 0)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source<'a> {
    pub host: Cow<'a, str>,
    pub port: Cow<'a, str>,
    pub user_agent: Cow<'a, str>,
}

/// `s3.object.userMetadata`, a string→string map. Entries keep message order when read (the
/// collision rule in `split_entries` needs every entry) and are written sorted, as Go does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserMetadata<'a> {
    pub(super) entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The first entry whose value was not a string, and what it was. Kept instead of failing
    /// in serde, whose error could not name the key.
    pub(super) not_text: Option<(Cow<'a, str>, &'static str)>,
}

impl<'a> UserMetadata<'a> {
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        self.entries.push((key.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.not_text.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

impl<'a, K: Into<Cow<'a, str>>, V: Into<Cow<'a, str>>> FromIterator<(K, V)> for UserMetadata<'a> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut metadata = UserMetadata::default();
        iter.into_iter().for_each(|(k, v)| metadata.insert(k, v));
        metadata
    }
}

impl Serialize for UserMetadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&(Cow<'_, str>, Cow<'_, str>)> = self.entries.iter().collect();
        sorted.sort_unstable();
        serializer.collect_map(sorted.into_iter().map(|(k, v)| (k, v)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for UserMetadata<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(MetadataVisitor)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = UserMetadata<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("userMetadata as an object of strings")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(UserMetadata::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(UserMetadata::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut metadata = UserMetadata::default();
        while let Some(Text(key)) = map.next_key()? {
            match map.next_value::<AnyText<'de>>()?.0 {
                Ok(value) => metadata.entries.push((key, value)),
                Err(found) if metadata.not_text.is_none() => metadata.not_text = Some((key, found)),
                Err(_) => {}
            }
        }
        Ok(metadata)
    }
}

/// A string, or `null` read as the empty (absent) string.
fn nullable<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Cow<'a, str>, D::Error> {
    Ok(Option::<Text<'de>>::deserialize(d)?.map_or(Cow::Borrowed(""), |Text(text)| text))
}

/// A size: a number, a string of digits (Ceph), or `null`.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(SizeVisitor)
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes (a number, or a string of digits)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Ceph's `[{"key": …, "val": …}]` arrays (or `null`), read into the same entries as a
/// MinIO `userMetadata` map, so that one rule splits and checks both.
fn entry_array<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<UserMetadata<'a>, D::Error> {
    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(borrow, default, deserialize_with = "nullable")]
        key: Cow<'a, str>,
        #[serde(borrow)]
        val: AnyText<'a>,
    }
    let entries = Option::<Vec<Entry<'de>>>::deserialize(d)?.unwrap_or_default();
    let mut metadata = UserMetadata::default();
    for Entry { key, val } in entries {
        match val.0 {
            Ok(value) => metadata.entries.push((key, value)),
            Err(found) if metadata.not_text.is_none() => metadata.not_text = Some((key, found)),
            Err(_) => {}
        }
    }
    Ok(metadata)
}

/// A JSON string, borrowed from the message when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
}

/// Any JSON value: a string, or the kind of value it was instead.
struct AnyText<'a>(Result<Cow<'a, str>, &'static str>);

impl<'de: 'a, 'a> Deserialize<'de> for AnyText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyTextVisitor)
    }
}

struct AnyTextVisitor;

impl<'de> Visitor<'de> for AnyTextVisitor {
    type Value = AnyText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(AnyText(Ok(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(AnyText(Ok(Cow::Owned(v.to_string()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(AnyText(Ok(Cow::Owned(v))))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(AnyText(Err("a boolean")))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(AnyText(Err("a number")))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(AnyText(Err("a number")))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(AnyText(Err("a number")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(AnyText(Err("null")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(AnyText(Err("an array")))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(AnyText(Err("an object")))
    }
}

/// What a message holds besides its records: enough to tell the stores' envelopes apart.
#[derive(Debug, Default)]
pub(super) struct Document<'a> {
    /// `Records`: every store's records (MinIO, RustFS, Ceph, versitygw, AWS via SQS/SNS).
    pub records: Option<Vec<Record<'a>>>,
    /// Whether MinIO's `EventName` or `Key` is there (RustFS copies the envelope).
    pub minio_envelope: bool,
    /// `Event`: the test message versitygw sends at start and AWS on configuration
    /// (`s3:TestEvent`), which has no records.
    pub event: Option<Cow<'a, str>>,
    /// `Service`: `Amazon S3` in AWS's test message.
    pub service: Option<Cow<'a, str>>,
    /// An EventBridge event: its `detail-type`, `source`, `time` and `detail`.
    pub detail_type: Option<Cow<'a, str>>,
    pub source: Option<Cow<'a, str>>,
    pub time: Option<Cow<'a, str>>,
    pub detail: Option<Detail<'a>>,
}

/// EventBridge's `detail` of an S3 event.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Detail<'a> {
    #[serde(borrow, default)]
    pub bucket: DetailBucket<'a>,
    #[serde(borrow, default)]
    pub object: DetailObject<'a>,
    /// e.g. `PutObject`, `CopyObject`, `DeleteObject`.
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub reason: Cow<'a, str>,
    /// `Permanently Deleted` or `Delete Marker Created`.
    #[serde(
        rename = "deletion-type",
        borrow,
        default,
        deserialize_with = "nullable"
    )]
    pub deletion_type: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DetailBucket<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub name: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DetailObject<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub key: Cow<'a, str>,
    #[serde(default, deserialize_with = "size")]
    pub size: Option<i64>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub etag: Cow<'a, str>,
    #[serde(rename = "version-id", borrow, default, deserialize_with = "nullable")]
    pub version_id: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub sequencer: Cow<'a, str>,
}

/// Reads a message's [`Document`], skipping every other field. `current` holds the index of
/// the record being read, so that a type error can be attributed to it.
pub(super) struct EnvelopeSeed<'c> {
    pub(super) current: &'c Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Document<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Document<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"Records\" (or EventBridge's \"detail\")")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut document = Document::default();
        while let Some(Text(key)) = map.next_key()? {
            match key.as_ref() {
                "Records" => {
                    document.records = Some(map.next_value_seed(RecordsSeed {
                        current: self.current,
                    })?)
                }
                "EventName" | "Key" => {
                    document.minio_envelope = true;
                    map.next_value::<IgnoredAny>()?;
                }
                "Event" => document.event = text_field(&mut map)?,
                "Service" => document.service = text_field(&mut map)?,
                "detail-type" => document.detail_type = text_field(&mut map)?,
                "source" => document.source = text_field(&mut map)?,
                "time" => document.time = text_field(&mut map)?,
                "detail" => document.detail = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(document)
    }
}

/// A top-level value that is a string where one is expected, or `None` when it is not.
fn text_field<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map.next_value::<AnyText<'de>>()?.0.ok())
}

struct RecordsSeed<'c> {
    current: &'c Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"Records\" as an array of event records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        loop {
            self.current.set(Some(records.len()));
            match seq.next_element()? {
                Some(record) => records.push(record),
                None => break,
            }
        }
        self.current.set(None);
        Ok(records)
    }
}
