//! ListObjectsV2 response bodies: keys, url-decoded only when the server says it encoded
//! them, and MinIO's per-object metadata (`metadata=true`). Pure: bytes in, a page out.
//!
//! Read with `aws-smithy-xml`, the decoder the SDK parses the same response with: unknown
//! elements are skipped whole, and text is kept as written (no trimming, which would change
//! a raw key such as `" lead"`). Its scoped reader stops quietly where the input ends or
//! breaks, so the whole body is first checked to tokenize and to close as many elements as it
//! opens: a page cut short must fail, not pass as a shorter page. (The tokenizer does not pair
//! end tags with start tags by name; a server that mixes them up is not caught.)
//!
//! MinIO's shape (`cmd/api-response.go`): `EncodingType` comes after the `<Contents>`, so keys
//! are decoded once the whole page is read. With `metadata=true` and when the caller may
//! GetObject, each `<Contents>` carries `<UserMetadata>` (one element per stored entry, named
//! by its key: `<X-Amz-Meta-Id>1843</X-Amz-Meta-Id>`, `<content-type>…`, omitted when empty)
//! and always `<Internal><K>…</K><M>…</M></Internal>`.

use aws_smithy_xml::decode::{try_data, Document, ScopedDecoder};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::{ListPage, Listed, ObjectRead};
use crate::event::unquote_etag;
use crate::event::{query_unescape, split_entries, NulInMetadata};

/// MinIO's listing adds `expires` to every object's metadata, the zero Go time when the
/// object has none; it is no metadata of the object, and no event carries it.
const ZERO_EXPIRES: &str = "Mon, 01 Jan 0001 00:00:00 GMT";

/// One page from a ListObjectsV2 response body; the error says what is wrong with it.
pub(super) fn parse(body: &[u8]) -> Result<ListPage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the listing is not UTF-8: {e}"))?;
    check_complete(text)?;
    let page = read_page(text)?;
    // Only a server that says it encoded the keys gets them decoded: versitygw ignores the
    // parameter (and answers an empty <EncodingType>), and decoding its raw `a+b` or `100%`
    // would name another object.
    let url_encoded = page
        .encoding_type
        .as_deref()
        .is_some_and(|encoding| encoding.eq_ignore_ascii_case("url"));
    let metadata_supported = page.objects.iter().any(|object| object.has_metadata);
    let objects = page
        .objects
        .into_iter()
        .map(|object| listed(object, url_encoded))
        .collect::<Result<Vec<_>, _>>()?;
    let next = match page.truncated {
        Some(true) => Some(
            page.next
                .filter(|token| !token.is_empty())
                .ok_or("<IsTruncated> is true but <NextContinuationToken> is missing")?,
        ),
        Some(false) | None => None,
    };
    Ok(ListPage {
        objects,
        next,
        metadata_supported,
    })
}

/// The elements of `<ListBucketResult>` that objmeta reads.
#[derive(Default)]
struct RawPage {
    objects: Vec<RawObject>,
    next: Option<String>,
    truncated: Option<bool>,
    encoding_type: Option<String>,
}

/// One `<Contents>` as written (key not yet decoded).
#[derive(Default)]
struct RawObject {
    key: Option<String>,
    last_modified: Option<String>,
    etag: Option<String>,
    size: Option<String>,
    /// `<UserMetadata>` entries as stored: `X-Amz-Meta-Id`, `content-type`, …
    metadata: Vec<(String, String)>,
    /// `<Internal>` or `<UserMetadata>` was there: MinIO answered `metadata=true` for it.
    has_metadata: bool,
}

/// Fails unless the tokenizer reads `text` to its end and every element is closed.
fn check_complete(text: &str) -> Result<(), String> {
    let mut depth = None;
    for token in Document::new(text) {
        let (_, at) = token.map_err(|e| format!("invalid XML: {e}"))?;
        depth = Some(at);
    }
    match depth {
        Some(0) => Ok(()),
        Some(_) => Err("the listing ends inside an element (cut short?)".to_string()),
        None => Err("the listing is empty".to_string()),
    }
}

fn read_page(text: &str) -> Result<RawPage, String> {
    let mut document = Document::new(text);
    let mut root = document.root_element().map_err(|e| e.to_string())?;
    if root.start_el().local() != "ListBucketResult" {
        return Err(format!(
            "expected <ListBucketResult>, found <{}>",
            root.start_el().local()
        ));
    }
    let mut page = RawPage::default();
    while let Some(mut tag) = root.next_tag() {
        // Decided before reading, because the name borrows `tag`.
        let name = PageField::of(tag.start_el().local());
        match name {
            PageField::Contents => page.objects.push(read_object(&mut tag)?),
            PageField::NextContinuationToken => page.next = Some(text_of(&mut tag)?),
            PageField::IsTruncated => page.truncated = Some(parse_bool(&text_of(&mut tag)?)?),
            PageField::EncodingType => page.encoding_type = Some(text_of(&mut tag)?),
            PageField::Other => {}
        }
    }
    Ok(page)
}

enum PageField {
    Contents,
    NextContinuationToken,
    IsTruncated,
    EncodingType,
    Other,
}

impl PageField {
    fn of(name: &str) -> Self {
        match name {
            "Contents" => Self::Contents,
            "NextContinuationToken" => Self::NextContinuationToken,
            "IsTruncated" => Self::IsTruncated,
            "EncodingType" => Self::EncodingType,
            _ => Self::Other,
        }
    }
}

fn read_object(contents: &mut ScopedDecoder<'_, '_>) -> Result<RawObject, String> {
    let mut object = RawObject::default();
    while let Some(mut tag) = contents.next_tag() {
        let name = ObjectField::of(tag.start_el().local());
        match name {
            ObjectField::Key => object.key = Some(text_of(&mut tag)?),
            ObjectField::LastModified => object.last_modified = Some(text_of(&mut tag)?),
            ObjectField::ETag => object.etag = Some(text_of(&mut tag)?),
            ObjectField::Size => object.size = Some(text_of(&mut tag)?),
            ObjectField::UserMetadata => {
                object.has_metadata = true;
                object.metadata = read_entries(&mut tag)?;
            }
            ObjectField::Internal => object.has_metadata = true,
            ObjectField::Other => {}
        }
    }
    Ok(object)
}

enum ObjectField {
    Key,
    LastModified,
    ETag,
    Size,
    UserMetadata,
    Internal,
    Other,
}

impl ObjectField {
    fn of(name: &str) -> Self {
        match name {
            "Key" => Self::Key,
            "LastModified" => Self::LastModified,
            "ETag" => Self::ETag,
            "Size" => Self::Size,
            "UserMetadata" => Self::UserMetadata,
            "Internal" => Self::Internal,
            _ => Self::Other,
        }
    }
}

/// `<UserMetadata>`'s children: element name = entry key, text = value.
fn read_entries(
    user_metadata: &mut ScopedDecoder<'_, '_>,
) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    while let Some(mut entry) = user_metadata.next_tag() {
        let element = entry.start_el();
        let key = match element.prefix() {
            "" => element.local().to_string(),
            prefix => format!("{prefix}:{}", element.local()),
        };
        let value = text_of(&mut entry)?;
        entries.push((key, value));
    }
    Ok(entries)
}

fn text_of(tag: &mut ScopedDecoder<'_, '_>) -> Result<String, String> {
    let name = tag.start_el().local().to_string();
    try_data(tag)
        .map(|text| text.into_owned())
        .map_err(|e| format!("<{name}>: {e}"))
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("<IsTruncated> is {other:?}, not true or false")),
    }
}

fn listed(object: RawObject, url_encoded: bool) -> Result<Listed, String> {
    let written = object
        .key
        .as_deref()
        .ok_or("a <Contents> element has no <Key>")?;
    let key = match url_encoded {
        true => query_unescape(written).map_err(|e| format!("key {written:?}: {e}"))?,
        false => written.to_string(),
    };
    let read = match object.has_metadata {
        true => object_read(&object).map_err(|e| format!("key {key:?}: {e}"))?,
        false => None,
    };
    Ok(Listed { key, read })
}

/// What a metadata listing says about one object; `None` without a `<LastModified>`, which
/// leaves the caller to HEAD it.
fn object_read(object: &RawObject) -> Result<Option<ObjectRead>, String> {
    let Some(last_modified) = object.last_modified.as_deref() else {
        return Ok(None);
    };
    let last_modified = OffsetDateTime::parse(last_modified, &Rfc3339)
        .map_err(|e| format!("<LastModified> {last_modified:?}: {e}"))?
        .to_offset(UtcOffset::UTC);
    let size = match object.size.as_deref() {
        Some(size) => Some(
            size.parse::<i64>()
                .ok()
                .filter(|size| *size >= 0)
                .ok_or_else(|| format!("<Size> {size:?} is not a size"))?,
        ),
        None => None,
    };
    let entries = object
        .metadata
        .iter()
        .filter(|(key, value)| !(key.eq_ignore_ascii_case("expires") && value == ZERO_EXPIRES))
        .map(|(key, value)| (key.as_str(), value.as_str()));
    let (user_metadata, system_metadata) = split_entries(entries)
        .map_err(|NulInMetadata { key }| format!("metadata entry {key:?} holds a NUL character"))?;
    Ok(Some(ObjectRead {
        etag: object.etag.as_deref().and_then(unquote_etag),
        size,
        last_modified,
        version_id: None,
        content_type: system_metadata.get("content-type"),
        user_metadata,
        system_metadata,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn keys(page: &ListPage) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    fn read<'a>(page: &'a ListPage, key: &str) -> Option<&'a ObjectRead> {
        let listed = page.objects.iter().find(|o| o.key == key).unwrap();
        listed.read.as_ref()
    }

    /// A ListBucketResult around `inner`, in MinIO's element order.
    fn page(inner: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix></Prefix>\
             <KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>{inner}</ListBucketResult>"
        )
    }

    fn error(body: &str) -> String {
        parse(body.as_bytes()).expect_err("expected an error")
    }

    #[test]
    fn a_minio_metadata_listing_carries_each_objects_read() {
        let page = parse(&fixture("minio-list-v2-metadata.xml")).unwrap();
        assert!(page.metadata_supported);
        assert_eq!(page.next.as_deref(), Some("5pel5pysL+iqni50eHQ="));
        assert_eq!(
            keys(&page),
            [
                "a b+c.txt",
                "dir/100% ü.txt",
                "empty-meta",
                "private/secret.bin",
                "日本/語.txt"
            ]
        );
        let first = read(&page, "a b+c.txt").unwrap();
        assert_eq!(
            first,
            &ObjectRead {
                etag: Some("d41d8cd98f00b204e9800998ecf8427e".to_string()),
                size: Some(42),
                last_modified: datetime!(2026-01-15 10:00:00.123 UTC),
                version_id: None,
                content_type: Some("text/plain".to_string()),
                user_metadata: first.user_metadata.clone(),
                system_metadata: first.system_metadata.clone(),
            }
        );
        assert_eq!(
            first.user_metadata.to_value(),
            json!({"api-url": "https://example.com/a?b=1&c=2", "id": "1843", "note": " spaced <b> "})
        );
        // MinIO's zero `expires` is dropped, a real one kept.
        assert_eq!(
            first.system_metadata.to_value(),
            json!({"content-type": "text/plain"})
        );
        let second = read(&page, "dir/100% ü.txt").unwrap();
        assert_eq!(
            second.etag.as_deref(),
            Some("9b2cf535f27731c974343645a3985328-2")
        );
        assert!(second.user_metadata.is_empty());
        assert_eq!(
            second.system_metadata.to_value(),
            json!({"cache-control": "max-age=60", "content-type": "application/octet-stream"})
        );
        let last = read(&page, "日本/語.txt").unwrap();
        assert_eq!(last.size, Some(0));
        assert_eq!(last.user_metadata.to_value(), json!({"lang": "日本語"}));
        assert_eq!(
            last.system_metadata.get("expires").as_deref(),
            Some("Wed, 21 Oct 2026 07:28:00 GMT")
        );
    }

    #[test]
    fn internal_alone_means_no_metadata_and_neither_means_head_it() {
        let page = parse(&fixture("minio-list-v2-metadata.xml")).unwrap();
        let empty = read(&page, "empty-meta").unwrap();
        assert!(empty.user_metadata.is_empty() && empty.system_metadata.is_empty());
        assert_eq!(empty.content_type, None);
        // No <UserMetadata> and no <Internal>: the caller may not GetObject it.
        assert_eq!(read(&page, "private/secret.bin"), None);
    }

    #[test]
    fn a_server_that_ignores_both_parameters_gets_raw_keys_and_heads() {
        // Recorded from versitygw 1.8.0, asked for encoding-type=url&metadata=true.
        let page = parse(&fixture("versitygw-list-v2.xml")).unwrap();
        assert!(!page.metadata_supported);
        assert!(page.objects.iter().all(|o| o.read.is_none()));
        assert_eq!(
            keys(&page),
            [
                " lead",
                "amp&lt<gt>.txt",
                "dir/sub/file.txt",
                "pct%25lit.txt",
                "pct%raw",
                "plus+sign.txt"
            ]
        );
        assert_eq!(page.next.as_deref(), Some("plus+sign.txt"));
    }

    #[test]
    fn keys_are_decoded_only_under_encoding_type_url() {
        let contents = "<IsTruncated>false</IsTruncated><Contents><Key>a+b%2B%25</Key></Contents>";
        for (encoding, key) in [
            ("<EncodingType>url</EncodingType>", "a b+%"),
            ("<EncodingType>URL</EncodingType>", "a b+%"),
            ("<EncodingType></EncodingType>", "a+b%2B%25"),
            ("", "a+b%2B%25"),
        ] {
            let parsed = parse(page(&format!("{contents}{encoding}")).as_bytes()).unwrap();
            assert_eq!(keys(&parsed), [key], "{encoding}");
            assert_eq!(parsed.next, None);
        }
        let bad = page("<Contents><Key>100%</Key></Contents><EncodingType>url</EncodingType>");
        assert!(error(&bad).contains("\"100%\""));
    }

    #[test]
    fn unknown_elements_are_skipped_whole() {
        let body = page(
            "<IsTruncated>false</IsTruncated><Future><Key>not an object</Key></Future>\
             <Contents><Owner><ID>x</ID><Key>nested</Key></Owner><Key>real</Key>\
             <ChecksumAlgorithm>CRC32</ChecksumAlgorithm></Contents>",
        );
        let parsed = parse(body.as_bytes()).unwrap();
        assert_eq!(keys(&parsed), ["real"]);
        assert!(!parsed.metadata_supported);
    }

    #[test]
    fn an_empty_page_proves_nothing() {
        let parsed = parse(page("<IsTruncated>false</IsTruncated>").as_bytes()).unwrap();
        assert!(parsed.objects.is_empty());
        assert!(!parsed.metadata_supported);
        assert_eq!(parsed.next, None);
    }

    #[test]
    fn broken_pages_are_errors_not_shorter_pages() {
        let full = page("<IsTruncated>false</IsTruncated><Contents><Key>a</Key></Contents>");
        let cut = &full[..full.find("</Contents>").unwrap()];
        assert!(error(cut).contains("cut short"));
        for (body, says) in [
            ("", "empty"),
            (
                "<Error><Code>AccessDenied</Code></Error>",
                "ListBucketResult",
            ),
            ("</a>", "XML"),
            ("<ListBucketResult><Contents>", "cut short"),
        ] {
            let shown = parse(body.as_bytes()).expect_err(body);
            assert!(shown.contains(says), "{body:?}: {shown}");
        }
        let truncated_without_token = page("<IsTruncated>true</IsTruncated>");
        assert!(error(&truncated_without_token).contains("NextContinuationToken"));
        let no_key = page("<IsTruncated>false</IsTruncated><Contents><Size>1</Size></Contents>");
        assert!(error(&no_key).contains("no <Key>"));
        let not_utf8 = b"<ListBucketResult><Contents><Key>\xff</Key></Contents></ListBucketResult>";
        assert!(parse(not_utf8).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn bad_values_in_a_metadata_entry_are_errors() {
        let object = |fields: &str| {
            page(&format!(
                "<IsTruncated>false</IsTruncated><Contents><Key>k</Key>{fields}\
                 <Internal><K>2</K><M>2</M></Internal></Contents>"
            ))
        };
        let time = "<LastModified>2026-01-15T10:00:00.123Z</LastModified>";
        assert!(error(&object(&format!("{time}<Size>-1</Size>"))).contains("<Size>"));
        assert!(error(&object("<LastModified>yesterday</LastModified>")).contains("LastModified"));
        let nul = format!("{time}<UserMetadata><X-Amz-Meta-A>&#0;</X-Amz-Meta-A></UserMetadata>");
        assert!(error(&object(&nul)).contains("NUL"));
        // Without a modification time there is no read: the caller HEADs the object.
        let parsed = parse(object("<Size>1</Size>").as_bytes()).unwrap();
        assert!(parsed.metadata_supported);
        assert_eq!(parsed.objects[0].read, None);
    }
}
