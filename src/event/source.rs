//! The S3 stores whose notifications objmeta reads, and what differs between them: how a
//! store is recognised, how it writes an object key, what its sequencer means, and whether
//! its events can be trusted for the object's state or only as a hint that it changed
//! (docs/sources.md; the facts, store by store, in `../shared/s3-sources.md`).

use time::OffsetDateTime;

use super::{whole_seconds_ns, ParseError};

/// The store that sent an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Store {
    Minio,
    Rustfs,
    Ceph,
    Versitygw,
    /// AWS S3 event records (as SQS/SNS connectors deliver them) and EventBridge events.
    Aws,
}

impl Store {
    /// The `source` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Minio => "minio",
            Self::Rustfs => "rustfs",
            Self::Ceph => "ceph",
            Self::Versitygw => "versitygw",
            Self::Aws => "aws",
        }
    }

    /// Recognises the store of one record from its `eventSource` and `eventName`.
    ///
    /// versitygw and AWS both say `aws:s3`; versitygw's names keep the `s3:` prefix and
    /// AWS's never have it. A record without `eventSource` in MinIO's envelope is MinIO's.
    pub fn recognise(
        event_source: &str,
        event_name: &str,
        minio_envelope: bool,
    ) -> Result<Store, ParseError> {
        match event_source {
            "minio:s3" => Ok(Self::Minio),
            "rustfs:s3" => Ok(Self::Rustfs),
            "ceph:s3" => Ok(Self::Ceph),
            "aws:s3" if event_name.starts_with("s3:") => Ok(Self::Versitygw),
            "aws:s3" => Ok(Self::Aws),
            "" if minio_envelope => Ok(Self::Minio),
            other => Err(ParseError::UnknownStore {
                event_source: other.to_string(),
            }),
        }
    }

    /// Whether the store's events carry the object's user metadata and an order objmeta
    /// can trust across partitions and restarts. Where they do not, `--enrich auto` reads
    /// the object's state with HeadObject instead of writing the event's.
    pub fn events_are_the_state(self) -> bool {
        match self {
            Self::Minio | Self::Rustfs | Self::Ceph => true,
            // versitygw: no metadata, a counter that restarts at 1, events reordered.
            // AWS: no metadata, a sequencer comparable only for one key.
            Self::Versitygw | Self::Aws => false,
        }
    }

    /// Decodes `s3.object.key` into the object name: MinIO, RustFS and AWS query-escape it
    /// (`+` is a space), Ceph and versitygw send it raw (`+` is a plus).
    pub fn decode_key(self, key: &str) -> Result<String, ParseError> {
        match self {
            Self::Minio | Self::Rustfs | Self::Aws => super::query_unescape(key),
            Self::Ceph | Self::Versitygw => Ok(key.to_string()),
        }
    }

    /// The record's sequencer as a number that orders one object's events, newer or equal
    /// wins (stored as a PostgreSQL bigint):
    /// - MinIO, RustFS: hex of the modification time in ns, taken as it is;
    /// - Ceph: hex of the raw little-endian bytes of (u32 seconds, u32 ns), decoded to ns;
    /// - AWS: hex comparable only for one key after right-padding the shorter with zeros:
    ///   its first 15 digits (60 bits, what a bigint holds), padded. Two events of one key
    ///   whose sequencers differ only further on tie, and their Kafka position decides;
    ///   that matters only with `--enrich never`, since by default AWS events are hints;
    /// - versitygw: a hex counter of the server process (`1`, `A`, `1A`), shared by all
    ///   keys, which restarts at 1: the event's second in ns plus the counter, so that a
    ///   restart (a later second) does not lose to the events before it. Only used when
    ///   objmeta does not read the object (`--enrich never`), and still weak: versitygw
    ///   sends its events concurrently, so one of the same second may carry a smaller
    ///   counter than an older one only by arriving late, never by being older.
    pub fn sequencer(self, text: &str, event_time: OffsetDateTime) -> Result<i64, ParseError> {
        let bad = |reason| ParseError::BadSequencer {
            value: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("empty"));
        }
        match self {
            Self::Minio | Self::Rustfs => hex_i64(text).map_err(bad),
            Self::Ceph => ceph_sequencer(text).map_err(bad),
            Self::Aws => aws_sequencer(text).map_err(bad),
            Self::Versitygw => versitygw_sequencer(text, event_time).map_err(bad),
        }
    }
}

/// `%X` of an unsigned number that must fit a bigint; either letter case.
fn hex_i64(text: &str) -> Result<i64, &'static str> {
    // Checked first because from_str_radix would also accept a leading '+'.
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not hexadecimal");
    }
    let value = u64::from_str_radix(text, 16).map_err(|_| "greater than i64::MAX")?;
    i64::try_from(value).map_err(|_| "greater than i64::MAX")
}

/// Ceph's `utime_t` (u32 seconds, u32 ns, little-endian) as hex of its 8 bytes.
fn ceph_sequencer(text: &str) -> Result<i64, &'static str> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not 16 hexadecimal digits (Ceph's seconds and nanoseconds)");
    }
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| "not hexadecimal")?;
    }
    let seconds = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let nanos = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if nanos >= 1_000_000_000 {
        return Err("its nanoseconds are not below one second");
    }
    Ok(i64::from(seconds) * 1_000_000_000 + i64::from(nanos))
}

/// AWS's sequencer, right-padded with zeros to 15 hex digits and cut there: two sequencers
/// of one key compare as AWS says once the shorter is padded, and 60 bits fit a bigint.
fn aws_sequencer(text: &str) -> Result<i64, &'static str> {
    const DIGITS: usize = 15;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not hexadecimal");
    }
    let mut padded: String = text.chars().take(DIGITS).collect();
    padded.extend(std::iter::repeat_n('0', DIGITS - padded.len()));
    hex_i64(&padded)
}

/// versitygw's counter, placed within the event's second.
fn versitygw_sequencer(text: &str, event_time: OffsetDateTime) -> Result<i64, &'static str> {
    let counter = hex_i64(text)?;
    Ok(whole_seconds_ns(event_time).saturating_add(counter.min(999_999_999)))
}

/// `--source`: recognise each message's store, or read every message as one store's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    #[default]
    Auto,
    Only(Store),
}

/// `--enrich`: when objmeta reads an object's state with HeadObject instead of writing
/// what its event says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Enrich {
    /// Exactly where the store's events fall short ([`Store::events_are_the_state`]).
    #[default]
    Auto,
    /// For every changed object, whatever the store.
    Always,
    /// Never: events are written as they are, with whatever order their store gives.
    Never,
}

/// How messages are decoded: the store and the enrichment settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoding {
    pub source: SourceChoice,
    pub enrich: Enrich,
}

impl Decoding {
    /// Whether an event of `store` is only a hint that its object changed.
    pub fn reads_state(&self, store: Store) -> bool {
        match self.enrich {
            Enrich::Always => true,
            Enrich::Never => false,
            Enrich::Auto => !store.events_are_the_state(),
        }
    }

    /// Whether some store's events may need an object read: then objmeta needs the S3 API.
    pub fn may_read(&self) -> bool {
        match self.source {
            SourceChoice::Only(store) => self.reads_state(store),
            SourceChoice::Auto => self.enrich != Enrich::Never,
        }
    }

    /// The store of a record: the forced one, or the one it shows.
    pub fn store(
        &self,
        event_source: &str,
        event_name: &str,
        minio_envelope: bool,
    ) -> Result<Store, ParseError> {
        match self.source {
            SourceChoice::Only(store) => Ok(store),
            SourceChoice::Auto => Store::recognise(event_source, event_name, minio_envelope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2026-01-15 10:00:00 UTC);

    #[test]
    fn stores_are_recognised_by_event_source_and_name() {
        let cases = [
            ("minio:s3", "s3:ObjectCreated:Put", false, Store::Minio),
            ("", "s3:ObjectCreated:Put", true, Store::Minio),
            ("rustfs:s3", "s3:ObjectCreated:Put", false, Store::Rustfs),
            ("ceph:s3", "ObjectCreated:Put", false, Store::Ceph),
            ("aws:s3", "s3:ObjectCreated:Put", false, Store::Versitygw),
            ("aws:s3", "ObjectCreated:Put", false, Store::Aws),
        ];
        for (source, name, envelope, store) in cases {
            assert_eq!(
                Store::recognise(source, name, envelope).unwrap(),
                store,
                "{source} {name}"
            );
        }
        let error = Store::recognise("garage:s3", "s3:ObjectCreated:Put", false).unwrap_err();
        assert_eq!(error.label(), "not_s3_event");
        assert!(error.to_string().contains("garage:s3"), "{error}");
        assert!(Store::recognise("", "s3:ObjectCreated:Put", false).is_err());
    }

    #[test]
    fn keys_are_unescaped_only_where_the_store_escapes_them() {
        for store in [Store::Minio, Store::Rustfs, Store::Aws] {
            assert_eq!(store.decode_key("a+b%2B%2Fc").unwrap(), "a b+/c");
        }
        for store in [Store::Ceph, Store::Versitygw] {
            assert_eq!(store.decode_key("a+b%2B%2Fc").unwrap(), "a+b%2B%2Fc");
        }
    }

    #[test]
    fn ceph_sequencers_are_little_endian_seconds_and_nanoseconds() {
        // 1700000000 s = 0x6553F100, 123456789 ns = 0x075BCD15; each little-endian.
        let ns = Store::Ceph.sequencer("00F1536515CD5B07", T).unwrap();
        assert_eq!(ns, 1_700_000_000_123_456_789);
        // Text order is not time order: one second later, but a smaller string.
        let later = Store::Ceph.sequencer("01F1536515CD5B07", T).unwrap();
        let earlier = Store::Ceph.sequencer("FFF0536515CD5B07", T).unwrap();
        assert!(later > earlier);
        assert!("01F1536515CD5B07" < "FFF0536515CD5B07");
        for bad in ["00F15365", "00F1536515CD5B0G", "00F15365FFFFFFFF"] {
            let error = Store::Ceph.sequencer(bad, T).unwrap_err();
            assert_eq!(error.label(), "bad_sequencer", "{bad}");
        }
    }

    #[test]
    fn aws_sequencers_compare_after_right_padding() {
        let short = Store::Aws.sequencer("0055AED6DCD90281E5", T).unwrap();
        let padded = Store::Aws.sequencer("0055AED6DCD9028", T).unwrap();
        assert_eq!(short, padded, "only 15 digits count");
        let a = Store::Aws.sequencer("0A", T).unwrap();
        let b = Store::Aws.sequencer("09FFFF", T).unwrap();
        assert!(a > b, "0A pads to 0A0000, above 09FFFF");
        assert!(Store::Aws.sequencer("xyz", T).is_err());
    }

    #[test]
    fn versitygw_counters_order_within_their_second_only() {
        let before_restart = Store::Versitygw.sequencer("4711", T).unwrap();
        let after_restart = Store::Versitygw
            .sequencer("1", T + time::Duration::seconds(1))
            .unwrap();
        assert!(after_restart > before_restart);
        let next = Store::Versitygw.sequencer("4712", T).unwrap();
        assert_eq!(next - before_restart, 1);
        let hex = Store::Versitygw.sequencer("1A", T).unwrap();
        assert_eq!(hex - Store::Versitygw.sequencer("1", T).unwrap(), 25);
        assert!(Store::Versitygw.sequencer("1G", T).is_err());
    }

    #[test]
    fn minio_sequencers_keep_their_limits() {
        assert_eq!(Store::Minio.sequencer("1", T).unwrap(), 1);
        assert!(Store::Minio.sequencer("8000000000000000", T).is_err());
        assert!(Store::Minio.sequencer("", T).is_err());
    }

    #[test]
    fn enrichment_goes_exactly_where_events_fall_short() {
        let auto = Decoding::default();
        assert!(!auto.reads_state(Store::Minio));
        assert!(!auto.reads_state(Store::Rustfs));
        assert!(!auto.reads_state(Store::Ceph));
        assert!(auto.reads_state(Store::Versitygw));
        assert!(auto.reads_state(Store::Aws));
        let always = Decoding {
            enrich: Enrich::Always,
            ..auto
        };
        assert!(always.reads_state(Store::Minio));
        let never = Decoding {
            enrich: Enrich::Never,
            ..auto
        };
        assert!(!never.reads_state(Store::Aws));
        assert!(!never.may_read());
        let minio_only = Decoding {
            source: SourceChoice::Only(Store::Minio),
            ..auto
        };
        assert!(!minio_only.may_read());
        assert!(auto.may_read());
    }
}
