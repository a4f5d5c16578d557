//! `--s3-*` flags: where the S3 API is and how to sign and secure requests to it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;

use super::S3Error;
use crate::redact::REDACTED;

/// S3 connection settings, flattened into the commands that read buckets
/// (`objmeta backfill`, `objmeta reconcile`, later `objmeta run`).
#[derive(Clone, clap::Args)]
pub struct S3Config {
    /// S3 API endpoint, `http://host:port` or `https://host[:port]`; required by the
    /// commands that read buckets.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region the requests are signed for (self-hosted stores accept their configured one,
    /// usually the default).
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Access key ID; when S3_ACCESS_KEY is unset, AWS_ACCESS_KEY_ID is used.
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    /// Secret access key; when S3_SECRET_KEY is unset, AWS_SECRET_ACCESS_KEY is used.
    /// Never printed.
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// PEM file of the CA that signed the S3 server's certificate: it replaces the system's
    /// trusted roots (like `curl --cacert`), for stores with a private CA.
    #[arg(long, env = "S3_CA_FILE")]
    pub s3_ca_file: Option<PathBuf>,
    /// Address buckets as `https://bucket.host/key` instead of the default path style
    /// (`https://host/bucket/key`), which is what self-hosted stores expect. The variable
    /// takes `true` or `false`.
    #[arg(long, env = "S3_VIRTUAL_HOSTED_STYLE")]
    pub s3_virtual_hosted_style: bool,
    /// Longest time one S3 request may take, connecting included (e.g. `30s`).
    #[arg(long, env = "S3_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub s3_request_timeout: Duration,
}

impl S3Config {
    /// Checks what the commands that read buckets need, with messages naming the flags and
    /// variables. The CA file is read (and checked) by `S3::new`.
    pub fn validate(&self) -> Result<(), S3Error> {
        let endpoint = self.endpoint()?;
        if self.s3_region.trim().is_empty() {
            return Err(config_error("--s3-region (S3_REGION) must not be empty"));
        }
        if self.s3_request_timeout.is_zero() {
            return Err(config_error(
                "--s3-request-timeout (S3_REQUEST_TIMEOUT) must be longer than zero",
            ));
        }
        if self.s3_ca_file.is_some() && endpoint.starts_with("http://") {
            return Err(config_error(
                "--s3-ca-file (S3_CA_FILE) is set but --s3-endpoint (S3_ENDPOINT) is http://, \
                 which uses no TLS: use https:// or drop the CA file",
            ));
        }
        self.credentials()?;
        Ok(())
    }

    /// Whether an endpoint is given: an empty one (`S3_ENDPOINT=`, as compose files leave an
    /// unset variable) is none.
    pub fn is_set(&self) -> bool {
        self.s3_endpoint
            .as_deref()
            .is_some_and(|endpoint| !endpoint.trim().is_empty())
    }

    /// The endpoint URL, which must be `http://` or `https://` with a host.
    pub(super) fn endpoint(&self) -> Result<&str, S3Error> {
        let endpoint = self.s3_endpoint.as_deref().map(str::trim).unwrap_or("");
        if endpoint.is_empty() {
            return Err(config_error(
                "--s3-endpoint (S3_ENDPOINT) is required to read buckets, e.g. http://minio:9000",
            ));
        }
        let host = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        match host {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(endpoint),
            _ => Err(config_error(format!(
                "--s3-endpoint (S3_ENDPOINT) {endpoint:?} is not an http:// or https:// URL with a host"
            ))),
        }
    }

    /// The access key pair: S3_ACCESS_KEY/S3_SECRET_KEY (or their flags), each falling back
    /// to the AWS SDKs' AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY when unset. clap's `env`
    /// takes one variable, so the fallback is read here, with the rest of the configuration.
    pub fn credentials(&self) -> Result<Credentials, S3Error> {
        self.credentials_from(|name| std::env::var(name).ok())
    }

    /// [`Self::credentials`] with the fallback variables read through `env`.
    fn credentials_from(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, S3Error> {
        // An empty value counts as unset (an optional Kubernetes secret key that is missing).
        let pick = |own: &Option<String>, fallback: &str| {
            own.clone()
                .filter(|value| !value.is_empty())
                .or_else(|| env(fallback).filter(|value| !value.is_empty()))
        };
        let access = pick(&self.s3_access_key, "AWS_ACCESS_KEY_ID");
        let secret = pick(&self.s3_secret_key, "AWS_SECRET_ACCESS_KEY");
        match (access, secret) {
            (Some(access), Some(secret)) => {
                Ok(Credentials::new(access, secret, None, None, "objmeta"))
            }
            (access, secret) => {
                let missing: Vec<&str> = [
                    (
                        access.is_none(),
                        "--s3-access-key (S3_ACCESS_KEY or AWS_ACCESS_KEY_ID)",
                    ),
                    (
                        secret.is_none(),
                        "--s3-secret-key (S3_SECRET_KEY or AWS_SECRET_ACCESS_KEY)",
                    ),
                ]
                .into_iter()
                .filter_map(|(absent, name)| absent.then_some(name))
                .collect();
                Err(config_error(format!(
                    "S3 credentials are required: set {}",
                    missing.join(" and ")
                )))
            }
        }
    }
}

fn config_error(message: impl Into<String>) -> S3Error {
    S3Error::Config(message.into())
}

/// Shows whether the keys are set, never their values.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |key: &Option<String>| key.as_ref().map(|_| REDACTED);
        f.debug_struct("S3Config")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key", &redacted(&self.s3_access_key))
            .field("s3_secret_key", &redacted(&self.s3_secret_key))
            .field("s3_ca_file", &self.s3_ca_file)
            .field("s3_virtual_hosted_style", &self.s3_virtual_hosted_style)
            .field("s3_request_timeout", &self.s3_request_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s3: S3Config,
    }

    fn parse(args: &[&str]) -> S3Config {
        Cli::try_parse_from(std::iter::once("objmeta").chain(args.iter().copied()))
            .expect("valid arguments")
            .s3
    }

    fn valid() -> S3Config {
        parse(&[
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-access-key",
            "AKIDEXAMPLE",
            "--s3-secret-key",
            "wJalrXUtnFEMI-secret",
        ])
    }

    fn message(result: Result<impl fmt::Debug, S3Error>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn defaults_are_path_style_us_east_1_and_30_s() {
        let config = valid();
        assert_eq!(config.s3_region, "us-east-1");
        assert!(!config.s3_virtual_hosted_style);
        assert_eq!(config.s3_request_timeout, Duration::from_secs(30));
        assert!(config.s3_ca_file.is_none());
        config.validate().unwrap();
        let virtual_hosted = parse(&["--s3-virtual-hosted-style"]);
        assert!(virtual_hosted.s3_virtual_hosted_style);
    }

    #[test]
    fn debug_shows_no_key() {
        let shown = format!("{:?}", valid());
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
        assert!(shown.contains("http://127.0.0.1:9000"), "{shown}");
    }

    #[test]
    fn credentials_fall_back_to_the_aws_variables() {
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("aws-access".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("aws-secret".to_string()),
            _ => None,
        };
        let mut config = valid();
        let own = config.credentials_from(aws).unwrap();
        assert_eq!(
            (own.access_key_id(), own.secret_access_key()),
            ("AKIDEXAMPLE", "wJalrXUtnFEMI-secret")
        );
        config.s3_access_key = None;
        let mixed = config.credentials_from(aws).unwrap();
        assert_eq!(
            (mixed.access_key_id(), mixed.secret_access_key()),
            ("aws-access", "wJalrXUtnFEMI-secret")
        );
        config.s3_secret_key = None;
        let fallback = config.credentials_from(aws).unwrap();
        assert_eq!(
            (fallback.access_key_id(), fallback.secret_access_key()),
            ("aws-access", "aws-secret")
        );
    }

    #[test]
    fn missing_credentials_name_what_to_set() {
        let mut config = valid();
        config.s3_secret_key = None;
        let shown = message(config.credentials_from(|_| None));
        assert!(
            shown.contains("S3_SECRET_KEY or AWS_SECRET_ACCESS_KEY"),
            "{shown}"
        );
        assert!(!shown.contains("S3_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
        config.s3_access_key = Some(String::new());
        let shown = message(config.credentials_from(|_| None));
        assert!(
            shown.contains("S3_ACCESS_KEY or AWS_ACCESS_KEY_ID"),
            "{shown}"
        );
        assert!(shown.contains("S3_SECRET_KEY"), "{shown}");
    }

    #[test]
    fn the_endpoint_is_required_and_must_be_a_url() {
        let mut config = valid();
        config.s3_endpoint = None;
        assert!(message(config.validate()).contains("--s3-endpoint (S3_ENDPOINT) is required"));
        for bad in [
            "",
            "minio:9000",
            "ftp://minio",
            "http://",
            "https:///bucket",
        ] {
            config.s3_endpoint = Some(bad.to_string());
            assert!(
                message(config.validate()).contains("S3_ENDPOINT"),
                "{bad:?}"
            );
        }
        for good in [
            "http://minio:9000",
            "https://s3.example.com",
            "https://[::1]:9000",
        ] {
            config.s3_endpoint = Some(good.to_string());
            config.validate().unwrap();
        }
    }

    #[test]
    fn cross_field_rules() {
        let mut config = valid();
        config.s3_request_timeout = Duration::ZERO;
        assert!(message(config.validate()).contains("S3_REQUEST_TIMEOUT"));
        let mut config = valid();
        config.s3_region = " ".to_string();
        assert!(message(config.validate()).contains("S3_REGION"));
        let mut config = valid();
        config.s3_ca_file = Some(PathBuf::from("/etc/ca.pem"));
        assert!(message(config.validate()).contains("S3_CA_FILE"));
        config.s3_endpoint = Some("https://minio:9000".to_string());
        config.validate().unwrap();
    }
}
