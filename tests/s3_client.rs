//! The S3 client against versitygw, a real S3 server (odd keys, paging, HEAD, errors), and
//! against stand-in servers for what versitygw cannot show: MinIO's metadata listing, an
//! endpoint with a private CA, a server that never answers, throttling.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use serde_json::json;

use objmeta::event::{self, Action};
use objmeta::s3::{ListPage, S3Config, S3Error, S3};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    s3: S3Config,
}

/// `--s3-*` arguments as a user gives them.
fn config(endpoint: &str, access_key: &str, secret_key: &str, extra: &[&str]) -> S3Config {
    let mut args = vec![
        "objmeta",
        "--s3-endpoint",
        endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-access-key",
        access_key,
        "--s3-secret-key",
        secret_key,
    ];
    args.extend_from_slice(extra);
    Args::try_parse_from(args).expect("valid --s3 arguments").s3
}

/// The client under test, on versitygw.
fn versitygw(extra: &[&str]) -> S3 {
    let s3 = common::s3();
    S3::new(&config(&s3.endpoint, &s3.access_key, &s3.secret_key, extra)).expect("S3 client")
}

/// A new, empty bucket of this test's own.
async fn bucket(admin: &aws_sdk_s3::Client, name: &str) -> String {
    let bucket = format!(
        "{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    admin
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

async fn put(admin: &aws_sdk_s3::Client, bucket: &str, key: &str, metadata: &[(&str, &str)]) {
    let mut request = admin
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("text/plain")
        .body(ByteStream::from_static(b"hello"));
    for (name, value) in metadata {
        request = request.metadata(*name, *value);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
}

/// Every page of a listing, following the continuation tokens.
async fn all_pages(s3: &S3, bucket: &str, prefix: &str, with_metadata: bool) -> Vec<ListPage> {
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_page(bucket, prefix, None, token.as_deref(), with_metadata)
            .await
            .expect("list page");
        token = page.next.clone();
        pages.push(page);
        if token.is_none() {
            return pages;
        }
        assert!(pages.len() < 100, "the listing does not end");
    }
}

fn keys(pages: &[ListPage]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|page| page.objects.iter().map(|o| o.key.clone()))
        .collect()
}

/// Keys that a careless decoder turns into other keys: space, `+`, `%`, an escape-looking
/// `%41`, `/`, UTF-8, a leading space, URL syntax.
const ODD_KEYS: [&str; 10] = [
    "plain.txt",
    "a b.txt",
    "a+b.txt",
    "100%.txt",
    "%41.txt",
    "dir/sub/file.txt",
    "dir/é 日本.txt",
    " lead",
    "q?x#y&z=1",
    "tilde~star*",
];

#[tokio::test]
async fn listing_pages_through_odd_keys_in_key_order() {
    let admin = common::bucket::admin();
    let bucket = bucket(&admin, "list").await;
    for key in ODD_KEYS {
        put(&admin, &bucket, key, &[("Id", "1")]).await;
    }
    let mut expected: Vec<String> = ODD_KEYS.iter().map(|k| k.to_string()).collect();
    expected.sort();
    let s3 = versitygw(&[]).with_max_keys(3);
    for with_metadata in [false, true] {
        let pages = all_pages(&s3, &bucket, "", with_metadata).await;
        assert_eq!(keys(&pages), expected, "with_metadata {with_metadata}");
        assert_eq!(pages.len(), 4);
        assert!(pages.iter().all(|page| page.objects.len() <= 3));
        // versitygw ignores metadata=true, and says so by omission: the caller HEADs.
        assert!(pages.iter().all(|page| !page.metadata_supported));
        assert!(pages
            .iter()
            .flat_map(|p| &p.objects)
            .all(|o| o.read.is_none()));
    }
    let dir = all_pages(&s3, &bucket, "dir/", false).await;
    assert_eq!(keys(&dir), ["dir/sub/file.txt", "dir/é 日本.txt"]);
    let resumed = s3
        .list_page(&bucket, "", Some("a b.txt"), None, false)
        .await
        .unwrap();
    let resumed: Vec<&str> = resumed.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(resumed, ["a+b.txt", "dir/sub/file.txt", "dir/é 日本.txt"]);
}

#[tokio::test]
async fn more_than_a_thousand_keys_take_two_pages() {
    let admin = common::bucket::admin();
    let bucket = bucket(&admin, "many").await;
    let keys_put: Vec<String> = (0..1001).map(|i| format!("k/{i:04}")).collect();
    futures::stream::iter(&keys_put)
        .for_each_concurrent(16, |key| put(&admin, &bucket, key, &[]))
        .await;
    let pages = all_pages(&versitygw(&[]), &bucket, "", false).await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].objects.len(), 1000);
    assert_eq!(keys(&pages), keys_put);
}

#[tokio::test]
async fn head_reads_what_a_minio_event_of_the_object_says() {
    let admin = common::bucket::admin();
    let bucket = bucket(&admin, "head").await;
    let key = "meta/ü x+y%.txt";
    let metadata = [("Id", "1843"), ("Mixed-Case", "V")];
    put(&admin, &bucket, key, &metadata).await;
    let before = time::OffsetDateTime::now_utc();
    let s3 = versitygw(&[]);
    let read = s3
        .head(&bucket, key)
        .await
        .unwrap()
        .expect("the object exists");
    assert_eq!(
        read.etag.as_deref(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    assert_eq!(read.size, Some(5));
    assert_eq!(read.content_type.as_deref(), Some("text/plain"));
    assert_eq!(read.version_id, None);
    assert!((read.last_modified - before).abs() < time::Duration::minutes(2));
    assert_eq!(
        read.user_metadata.to_value(),
        json!({"id": "1843", "mixed-case": "V"})
    );
    assert_eq!(
        read.system_metadata.to_value(),
        json!({"content-type": "text/plain"})
    );
    // MinIO's event of the same object: canonical header names, as MinIO stores them.
    let minio = [("X-Amz-Meta-Id", "1843"), ("X-Amz-Meta-Mixed-Case", "V")];
    let (_, payload) = common::minio_message("s3:ObjectCreated:Put", &bucket, key, 1, None, &minio);
    let change = event::parse(Some(&payload)).unwrap().changes.remove(0);
    let Action::Upsert(state) = change.action else {
        panic!("expected an upsert");
    };
    assert_eq!(read.user_metadata, state.user_metadata);
    assert_eq!(read.system_metadata, state.system_metadata);

    assert_eq!(s3.head(&bucket, "meta/missing").await.unwrap(), None);
    // A missing bucket is a 404 without a body too: the documented ambiguity.
    let missing_bucket = format!("{bucket}-gone");
    assert_eq!(s3.head(&missing_bucket, key).await.unwrap(), None);
}

#[tokio::test]
async fn refusals_name_the_bucket_and_what_to_fix() {
    let admin = common::bucket::admin();
    let bucket = bucket(&admin, "errors").await;
    put(&admin, &bucket, "k", &[]).await;
    let missing = format!("{bucket}-gone");
    let error = versitygw(&[])
        .list_page(&missing, "", None, None, false)
        .await
        .unwrap_err();
    assert_refusal(&error, "no_such_bucket", &[&missing, "S3_ENDPOINT"]);

    let s3 = common::s3();
    let wrong_secret = "not-the-secret-0b7f";
    let client = S3::new(&config(&s3.endpoint, &s3.access_key, wrong_secret, &[])).unwrap();
    let error = client
        .list_page(&bucket, "", None, None, false)
        .await
        .unwrap_err();
    assert_refusal(
        &error,
        "credentials",
        &[&bucket, "S3_SECRET_KEY", "SignatureDoesNotMatch"],
    );
    assert!(
        !format!("{error} {error:?}").contains(wrong_secret),
        "{error:?}"
    );
    // A HEAD response has no body: a 403 cannot say which of the two is wrong.
    let error = client.head(&bucket, "k").await.unwrap_err();
    assert_refusal(&error, "access_denied", &["s3:GetObject", "S3_SECRET_KEY"]);

    let client = S3::new(&config(&s3.endpoint, "nobody", &s3.secret_key, &[])).unwrap();
    let error = client
        .list_page(&bucket, "", None, None, false)
        .await
        .unwrap_err();
    assert_refusal(&error, "credentials", &["S3_ACCESS_KEY"]);
}

fn assert_refusal(error: &S3Error, label: &str, mentions: &[&str]) {
    let shown = error.to_string();
    assert_eq!(error.kind_label(), label, "{shown}");
    assert!(!error.is_retriable(), "{shown}");
    for mention in mentions {
        assert!(shown.contains(mention), "{mention:?} missing from {shown}");
    }
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_a_retriable_connection_error() {
    let port = common::free_port();
    let client = S3::new(&config(&format!("http://127.0.0.1:{port}"), "a", "b", &[])).unwrap();
    let error = client
        .list_page("b", "", None, None, false)
        .await
        .unwrap_err();
    assert_eq!(error.kind_label(), "connection", "{error}");
    assert!(error.is_retriable());
    assert!(
        error.to_string().contains("listing bucket \"b\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Connections complete in the kernel's backlog; nothing ever reads the request.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let client = S3::new(&config(
        &endpoint,
        "a",
        "b",
        &["--s3-request-timeout", "1s"],
    ))
    .unwrap();
    let started = Instant::now();
    let error = client.head("b", "k").await.unwrap_err();
    assert_eq!(error.kind_label(), "timeout", "{error}");
    assert!(error.is_retriable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// What a stand-in server answers to one request.
type Handler = Arc<dyn Fn(&hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> + Send + Sync>;

/// A stand-in S3 server on a free port, over TLS when given an acceptor.
async fn stand_in(tls: Option<SslAcceptor>, handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tls = tls.map(Arc::new);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new();
                match tls {
                    None => {
                        let _ = connection
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let ssl = Ssl::new(acceptor.context()).unwrap();
                        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                        // A client that refuses the certificate ends here.
                        if Pin::new(&mut stream).accept().await.is_ok() {
                            let _ = connection
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    address
}

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from_static(body))).unwrap()
}

const MINIO_LISTING: &[u8] = include_bytes!("fixtures/minio-list-v2-metadata.xml");

#[tokio::test]
async fn a_minio_metadata_listing_is_asked_for_signed_and_read() {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    let handler: Handler = Arc::new(move |request| {
        let query = request.uri().query().unwrap_or("").to_string();
        let signed = request.headers().contains_key("authorization");
        seen.lock().unwrap().push((query, signed));
        response(200, &[("content-type", "application/xml")], MINIO_LISTING)
    });
    let address = stand_in(None, handler).await;
    let client = S3::new(&config(&format!("http://{address}"), "a", "b", &[])).unwrap();
    let page = client
        .list_page("photos", "", None, None, true)
        .await
        .unwrap();
    assert!(page.metadata_supported);
    assert_eq!(page.objects.len(), 5);
    let first = page.objects[0]
        .read
        .as_ref()
        .expect("metadata from the listing");
    assert_eq!(page.objects[0].key, "a b+c.txt");
    assert_eq!(first.user_metadata.to_value()["id"], "1843");
    assert_eq!(page.objects[3].read, None);
    client
        .list_page("photos", "", None, None, false)
        .await
        .unwrap();
    let queries = queries.lock().unwrap();
    let (with, signed) = &queries[0];
    assert!(*signed);
    for parameter in [
        "list-type=2",
        "encoding-type=url",
        "max-keys=1000",
        "metadata=true",
    ] {
        assert!(
            with.split('&').any(|p| p == parameter),
            "{parameter} missing from {with}"
        );
    }
    assert!(!queries[1].0.contains("metadata"), "{}", queries[1].0);
}

#[tokio::test]
async fn overload_is_retriable_and_says_so() {
    let handler: Handler = Arc::new(|request| {
        match request.method().as_str() {
        "HEAD" => response(503, &[], b""),
        _ => response(
            503,
            &[("content-type", "application/xml")],
            b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
        ),
    }
    });
    let address = stand_in(None, handler).await;
    let client = S3::new(&config(&format!("http://{address}"), "a", "b", &[])).unwrap();
    let listing = client
        .list_page("b", "", None, None, false)
        .await
        .unwrap_err();
    let head = client.head("b", "k").await.unwrap_err();
    for error in [listing, head] {
        assert_eq!(error.kind_label(), "throttled", "{error}");
        assert!(error.is_retriable());
    }
}

#[tokio::test]
async fn a_private_ca_is_trusted_exactly_when_given() {
    let (ca, acceptor) = private_ca_and_server_tls();
    let handler: Handler = Arc::new(|_| {
        response(
            200,
            &[
                ("etag", "\"5d41402abc4b2a76b9719d911017c592\""),
                ("last-modified", "Thu, 15 Jan 2026 10:00:00 GMT"),
                ("content-length", "5"),
                ("x-amz-meta-id", "1843"),
            ],
            b"",
        )
    });
    let address = stand_in(Some(acceptor), handler).await;
    let endpoint = format!("https://localhost:{}", address.port());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let ca_flag = ["--s3-ca-file", ca_file.to_str().unwrap()];

    let trusting = S3::new(&config(&endpoint, "a", "b", &ca_flag)).unwrap();
    let read = trusting.head("b", "k").await.unwrap().expect("object");
    assert_eq!(
        read.etag.as_deref(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    assert_eq!(read.user_metadata.to_value(), json!({"id": "1843"}));

    let system_roots = S3::new(&config(&endpoint, "a", "b", &[])).unwrap();
    let error = system_roots.head("b", "k").await.unwrap_err();
    assert_eq!(error.kind_label(), "tls", "{error}");
    assert!(!error.is_retriable());
    assert!(error.to_string().contains("S3_CA_FILE"), "{error}");
}

/// A CA certificate (PEM) and a server TLS setup whose certificate it signed, for
/// `localhost` and 127.0.0.1.
fn private_ca_and_server_tls() -> (Vec<u8>, SslAcceptor) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509NameRef, X509};

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }
    fn name(common_name: &str) -> X509Name {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", common_name).unwrap();
        name.build()
    }
    /// A certificate of `key` for `subject`, valid for a day, to be signed by `issuer`.
    fn builder(
        subject: &str,
        issuer: &X509NameRef,
        serial: u32,
        key: &PKey<Private>,
    ) -> X509Builder {
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        let serial = BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(&name(subject)).unwrap();
        builder.set_issuer_name(issuer).unwrap();
        builder.set_pubkey(key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        builder
    }

    let ca_key = key();
    let ca_name = name("objmeta test CA");
    let mut ca = builder("objmeta test CA", &ca_name, 1, &ca_key);
    ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let usage = KeyUsage::new()
        .critical()
        .key_cert_sign()
        .crl_sign()
        .build();
    ca.append_extension(usage.unwrap()).unwrap();
    ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca: X509 = ca.build();

    let server_key = key();
    let mut server = builder("localhost", ca.subject_name(), 2, &server_key);
    let names = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&server.x509v3_context(Some(&ca), None))
        .unwrap();
    server.append_extension(names).unwrap();
    server
        .append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    let usage = ExtendedKeyUsage::new().server_auth().build();
    server.append_extension(usage.unwrap()).unwrap();
    server.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let server = server.build();

    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acceptor.set_private_key(&server_key).unwrap();
    acceptor.set_certificate(&server).unwrap();
    acceptor.add_extra_chain_cert(ca.clone()).unwrap();
    (ca.to_pem().unwrap(), acceptor.build())
}
