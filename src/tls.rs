//! TLS for PostgreSQL, following libpq's `sslmode` and `sslrootcert` in
//! `DATABASE_URL`, on OpenSSL (already linked for Kafka's TLS).

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

use crate::error::SinkError;

/// How the server's certificate is checked, from libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertCheck {
    /// `disable`, `prefer`, `require`: encryption without authentication
    /// (libpq does the same; `require` with an `sslrootcert` is `VerifyCa`).
    None,
    /// `verify-ca`: the chain must lead to a trusted root; any host name.
    VerifyCa,
    /// `verify-full`: `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

/// The TLS part of `DATABASE_URL`. tokio-postgres knows `sslmode` only as
/// disable/prefer/require and refuses `verify-ca`, `verify-full` and
/// `sslrootcert`, so those are read here and removed (`verify-*` becomes
/// `require`, i.e. TLS is mandatory) before the driver parses the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The URL for tokio-postgres, without the options handled here.
    pub driver_url: String,
    pub check: CertCheck,
    /// `sslrootcert`: a PEM file of trusted roots; `None` or `system` means
    /// the system's trust store.
    pub root_cert: Option<String>,
}

impl TlsSettings {
    /// Reads `sslmode`/`sslrootcert` from a URL (`postgres://…?sslmode=…`)
    /// or a key/value string (`host=… sslmode=…`).
    pub fn from_url(url: &str) -> Result<TlsSettings, SinkError> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let options = if is_url {
            url_options(url)
        } else {
            keyword_options(url)?
        };
        let mut mode = None;
        let mut root_cert = None;
        let mut keep = Vec::new();
        for option in options {
            match option.key.as_str() {
                "sslmode" => mode = Some(option.value.clone()),
                "sslrootcert" => root_cert = Some(option.value.clone()),
                _ => {}
            }
            if option.key == "sslrootcert" {
                continue;
            }
            if option.key == "sslmode" && option.value.starts_with("verify-") {
                keep.push(OptionText {
                    raw: "sslmode=require".into(),
                    ..option
                });
                continue;
            }
            keep.push(option);
        }
        let check = match mode.as_deref() {
            Some("verify-full") => CertCheck::VerifyFull,
            Some("verify-ca") => CertCheck::VerifyCa,
            // libpq: "require" with a root certificate verifies the chain.
            Some("require") if root_cert.is_some() => CertCheck::VerifyCa,
            _ => CertCheck::None,
        };
        let driver_url = if is_url {
            let base = url.split_once('?').map_or(url, |(base, _)| base);
            let query: Vec<&str> = keep.iter().map(|o| o.raw.as_str()).collect();
            if query.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", query.join("&"))
            }
        } else {
            keep.iter()
                .map(|o| o.raw.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        Ok(TlsSettings {
            driver_url,
            check,
            root_cert,
        })
    }

    /// The OpenSSL connector doing what `check` asks.
    pub fn connector(&self) -> Result<MakeTlsConnector, SinkError> {
        let tls_error = |what: &str, e: openssl::error::ErrorStack| {
            SinkError::Url(format!("TLS setup: {what}: {e}"))
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| tls_error("creating the OpenSSL context", e))?;
        match self.check {
            CertCheck::None => builder.set_verify(SslVerifyMode::NONE),
            CertCheck::VerifyCa | CertCheck::VerifyFull => {
                builder.set_verify(SslVerifyMode::PEER);
                match self.root_cert.as_deref() {
                    None | Some("system") => builder
                        .set_default_verify_paths()
                        .map_err(|e| tls_error("loading the system's trusted roots", e))?,
                    Some(path) => {
                        if let Err(e) = std::fs::metadata(path) {
                            return Err(SinkError::Url(format!(
                                "sslrootcert {path:?} cannot be read: {e}"
                            )));
                        }
                        builder
                            .set_ca_file(path)
                            .map_err(|e| tls_error(&format!("sslrootcert {path:?}"), e))?;
                    }
                }
            }
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        let check_host = self.check == CertCheck::VerifyFull;
        connector.set_callback(move |connection, _host| {
            connection.set_verify_hostname(check_host);
            Ok(())
        });
        Ok(connector)
    }
}

/// One option of the connection string, as written (`raw`) and decoded.
#[derive(Clone, Debug)]
struct OptionText {
    key: String,
    value: String,
    raw: String,
}

fn url_options(url: &str) -> Vec<OptionText> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            OptionText {
                key: percent_decode(key),
                value: percent_decode(value),
                raw: pair.to_string(),
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits libpq's `key=value key='quoted value'` form, keeping each option's
/// text so the others reach the driver unchanged.
fn keyword_options(text: &str) -> Result<Vec<OptionText>, SinkError> {
    let mut options = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(options);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(SinkError::Url(format!(
                "expected `=` after {key:?} in the connection string"
            )));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = text.len();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' if quoted => {
                    end = index + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = index;
                    break;
                }
                c => value.push(c),
            }
        }
        options.push(OptionText {
            key,
            value,
            raw: text[start..end].to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn verify_modes_and_root_cert_are_taken_out_of_the_url() {
        let tls = TlsSettings::from_url(
            "postgres://u:p%40ss@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            tls.driver_url,
            "postgres://u:p%40ss@db:5432/x?application_name=a&sslmode=require"
        );
        assert_eq!(tls.check, CertCheck::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        tokio_postgres::Config::from_str(&tls.driver_url).unwrap();

        let tls = TlsSettings::from_url("postgres://u@db/x?sslmode=verify-ca").unwrap();
        assert_eq!(
            (tls.driver_url.as_str(), tls.check),
            ("postgres://u@db/x?sslmode=require", CertCheck::VerifyCa)
        );
        let tls =
            TlsSettings::from_url("postgres://u@db/x?sslrootcert=/ca&sslmode=require").unwrap();
        assert_eq!(tls.check, CertCheck::VerifyCa, "libpq: require + root cert");
        let tls = TlsSettings::from_url("postgres://u@db/x").unwrap();
        assert_eq!(
            (tls.driver_url.as_str(), tls.check),
            ("postgres://u@db/x", CertCheck::None)
        );
    }

    #[test]
    fn keyword_form_keeps_other_options_verbatim() {
        let tls = TlsSettings::from_url(
            "host=db password='a b\\'c' sslmode = verify-full sslrootcert='/etc/my ca.pem' dbname=x",
        )
        .unwrap();
        assert_eq!(
            tls.driver_url,
            "host=db password='a b\\'c' sslmode=require dbname=x"
        );
        assert_eq!(tls.check, CertCheck::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/my ca.pem"));
        let parsed = tokio_postgres::Config::from_str(&tls.driver_url).unwrap();
        assert_eq!(parsed.get_password(), Some(b"a b'c".as_slice()));
        assert!(TlsSettings::from_url("host=db oops").is_err());
    }

    #[test]
    fn a_missing_root_cert_is_a_clear_error() {
        let tls = TlsSettings::from_url(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap();
        let err = tls
            .connector()
            .err()
            .expect("unreadable CA file")
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
