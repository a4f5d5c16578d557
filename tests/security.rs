//! Security: PostgreSQL over TLS (sslmode require / verify-ca /
//! verify-full with a CA file), Kafka over SASL/PLAIN through the `-X`
//! pass-through, a least-privilege database role, and secrets that never
//! appear in logs, errors or /metrics — on a private instance, whose
//! PostgreSQL has ssl=on and whose broker has a SASL listener.

mod common;

use std::time::Duration;

use common::{http_get, minio_message, wait_until, PrivateServices, TestBed};

const T0: u64 = 1_764_000_000_000_000_000;

fn with_query(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sasl_least_privilege_and_no_secret_in_logs() {
    let instance = PrivateServices::start("security");
    let bed = TestBed::on(instance.services.clone(), "security", 2, &[]).await;
    let port = instance.var("PG_PORT");
    let ca = instance.var("PG_CA_FILE");
    let other_ca = instance.var("PG_OTHER_CA_FILE");
    let db_password = instance.var("PG_APP_PASSWORD");
    let sasl_password = instance.var("KAFKA_SASL_PASSWORD");
    let app = |host: &str, query: &str| {
        with_query(
            &format!(
                "postgres://{}:{db_password}@{host}:{port}/objmeta",
                instance.var("PG_APP_ROLE")
            ),
            query,
        )
    };
    let migrate = |url: String| {
        let mut config = bed.run_config(0, &[]).database;
        config.database_url = url;
        async move { objmeta::migrate(&config).await }
    };

    // TLS modes: require encrypts, verify-full checks the CA and the name.
    let verify_full = app(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    migrate(app("127.0.0.1", "sslmode=require"))
        .await
        .expect("sslmode=require");
    migrate(app(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-full, the certificate names localhost");
    migrate(app(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-ca");
    let wrong_ca = migrate(app(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await
    .expect_err("a certificate from another CA is refused");
    assert!(
        wrong_ca.to_string().contains("certificate verify failed"),
        "{wrong_ca}"
    );

    // The real binary: TLS (verify-full) to the database as the
    // least-privilege role, SASL/PLAIN to the broker.
    let sasl = [
        "security.protocol=SASL_PLAINTEXT",
        "sasl.mechanism=PLAIN",
        &format!("sasl.username={}", instance.var("KAFKA_SASL_USERNAME")),
        &format!("sasl.password={sasl_password}"),
    ]
    .join(";");
    let (key, payload) = minio_message(
        "s3:ObjectCreated:Put",
        "secure",
        "report.pdf",
        T0,
        None,
        &[("X-Amz-Meta-Owner", "ana")],
    );
    bed.publish(&[(key, payload)]).await;
    let mut service = bed.spawn_binary_env(
        &[],
        &[
            ("KAFKA_BROKERS", instance.var("KAFKA_SASL_BROKERS")),
            ("KAFKA_PROPERTIES", &sasl),
            ("DATABASE_URL", &verify_full),
            ("LOG_LEVEL", "debug"),
        ],
    );
    bed.wait_committed(1, Duration::from_secs(60)).await;
    let db = bed.db().await;
    let owner: String = db
        .query_one(
            "SELECT user_metadata->>'owner' FROM current_objects WHERE key = 'report.pdf'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "ana");
    let (connections, encrypted): (i64, i64) = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'objmeta_app'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        connections > 0 && connections == encrypted,
        "{encrypted} of {connections} encrypted"
    );
    let owner_of_schema: String = db
        .query_one(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1",
            &[&bed.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owner_of_schema, "objmeta_app",
        "the role owns only its schema"
    );
    let (_, metrics) = http_get(service.http_port, "/metrics").await.unwrap();
    let status = service.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{}", service.log());
    let mut outputs = vec![("sasl+tls run".to_string(), service.log() + &metrics)];

    // Error paths must not leak either secret: a wrong database password,
    // an unreachable database, a wrong SASL password, and --help.
    let closed_port = common::free_port();
    let unreachable = format!(
        "postgres://objmeta_app:{db_password}@127.0.0.1:{closed_port}/objmeta?sslmode=require"
    );
    let wrong_password = verify_full.replace(db_password, "not-the-password");
    let bad_sasl = sasl.replace(sasl_password, "wrong-sasl-password");
    let runs = [
        ("wrong db password", wrong_password.as_str(), sasl.as_str()),
        ("unreachable db", unreachable.as_str(), sasl.as_str()),
        (
            "wrong sasl password",
            verify_full.as_str(),
            bad_sasl.as_str(),
        ),
    ];
    for (label, url, properties) in runs {
        let mut run = bed.spawn_binary_env(
            &[],
            &[
                ("KAFKA_BROKERS", instance.var("KAFKA_SASL_BROKERS")),
                ("KAFKA_PROPERTIES", properties),
                ("DATABASE_URL", url),
                ("LOG_LEVEL", "debug"),
            ],
        );
        let expected = match label {
            "wrong db password" => "password authentication failed",
            "unreachable db" => "database not reachable",
            _ => "Authentication failed",
        };
        wait_until(Duration::from_secs(60), label, || {
            let log = run.log();
            async move { log.contains(expected).then_some(()) }
        })
        .await;
        let metrics = http_get(run.http_port, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        run.kill();
        outputs.push((label.to_string(), run.log() + &metrics));
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_objmeta"))
        .args(["run", "--help"])
        .env("DATABASE_URL", &verify_full)
        .env("KAFKA_PROPERTIES", &sasl)
        .output()
        .unwrap();
    outputs.push((
        "--help".into(),
        String::from_utf8_lossy(&help.stdout).into(),
    ));

    for (label, output) in &outputs {
        for secret in [db_password, sasl_password] {
            assert!(
                !output.contains(secret),
                "{label}: a secret appears in the output:\n{output}"
            );
        }
    }
    eprintln!(
        "security: TLS require/verify-ca/verify-full ok, wrong CA refused, {encrypted} of {connections} \
         objmeta connections encrypted, SASL/PLAIN consumed, schema owned by objmeta_app, \
         no secret in {} outputs",
        outputs.len()
    );
}

/// A mistyped or invalid `-X` property: librdkafka's texts quote the value
/// (`Invalid value "…"`, `Unsupported SASL mechanism: …`, CONFWARN lines),
/// and clap quotes a refused argument. None of it may show the value, in
/// the real binary's log, its error, or /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_and_invalid_properties_never_show_their_value() {
    let bed = common::TestBed::new("xsecret", 1).await;
    // (properties, a text the log must show instead, keeps running)
    let cases: [(&[&str], &str, bool); 6] = [
        (&["sasl.passwrd=hunter2-a"], "sasl.passwrd", false),
        (&["sasl.password:hunter2-b"], "kafka-property", false),
        (&["security.protocol=hunter2-c"], "security.protocol", false),
        (&["fetch.min.bytes=-987654"], "fetch.min.bytes", false),
        (
            &[
                "security.protocol=SASL_PLAINTEXT",
                "sasl.mechanism=hunter2-d",
            ],
            "Unsupported SASL mechanism",
            false,
        ),
        (&["sasl.mechanism=hunter2-e"], "CONFWARN", true),
    ];
    for (properties, expected, keeps_running) in cases {
        let secrets: Vec<&str> = properties
            .iter()
            .filter_map(|p| p.split_once(['=', ':']).map(|(_, v)| v))
            .filter(|v| v.contains("hunter2") || v.starts_with('-'))
            .collect();
        let args: Vec<&str> = properties.iter().flat_map(|p| ["-X", *p]).collect();
        let mut run = bed.spawn_binary_env(&args, &[("LOG_LEVEL", "debug")]);
        let metrics = if keeps_running {
            wait_until(Duration::from_secs(60), expected, || {
                let log = run.log();
                async move { log.contains(expected).then_some(()) }
            })
            .await;
            let metrics = http_get(run.http_port, "/metrics").await.map(|r| r.1);
            run.terminate(Duration::from_secs(60)).await;
            metrics.expect("/metrics answers")
        } else {
            wait_until(Duration::from_secs(60), "objmeta to exit", || {
                let exited = !run.running();
                async move { exited.then_some(()) }
            })
            .await;
            String::new()
        };
        let log = run.log();
        assert!(
            log.contains(expected),
            "{properties:?}: {expected:?} missing:\n{log}"
        );
        for secret in &secrets {
            assert!(
                !log.contains(secret) && !metrics.contains(secret),
                "{properties:?}: {secret} appears:\n{log}"
            );
        }
    }
}
