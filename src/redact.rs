//! Keeps the values of the user's librdkafka properties (`-X key=value`)
//! out of logs and errors: they may hold passwords, and librdkafka quotes
//! them freely (`Invalid value "…" for configuration property "…"`,
//! `Unsupported SASL mechanism: …`, CONFWARN log lines).
//!
//! Every piece of text that librdkafka produces and objmeta passes on goes
//! through one [`Redactor`]: the client creation errors and the log and
//! error callbacks of each client context. Its rule is blunt on purpose:
//! any `-X` value, whatever its property, is replaced by `[redacted]`. A
//! value librdkafka refused (a mistyped property name) never reached
//! librdkafka's own redaction of sensitive properties, and guessing which
//! values are secret is how `sasl.passwrd=…` leaked. The cost is that a
//! short value such as `1` also disappears from the texts it occurs in.

use std::borrow::Cow;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

/// What replaces a property value in text.
pub const REDACTED: &str = "[redacted]";

/// The `-X` values to cut out of librdkafka's text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Non-empty values, longest first, so that a value containing another
    /// one is replaced whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new(properties: &[(String, String)]) -> Self {
        let mut values: Vec<String> = properties
            .iter()
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
            .collect();
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        values.dedup();
        Redactor { values }
    }

    /// `text` with every property value replaced by [`REDACTED`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), REDACTED));
            }
        }
        text
    }

    /// A client creation error fit to be shown: librdkafka's configuration
    /// errors carry the refused value twice (in its message and as a field).
    pub fn error(&self, error: KafkaError) -> KafkaError {
        match error {
            KafkaError::ClientConfig(result, description, key, _value) => KafkaError::ClientConfig(
                result,
                self.scrub(&description).into_owned(),
                key,
                REDACTED.to_string(),
            ),
            KafkaError::ClientCreation(description) => {
                KafkaError::ClientCreation(self.scrub(&description).into_owned())
            }
            other => other,
        }
    }

    /// Forwards a librdkafka log line to tracing, scrubbed; what
    /// rust-rdkafka's default `ClientContext::log` does, minus the values.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = self.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Reports a client error (librdkafka's error callback), scrubbed.
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        let error = self.scrub(&error.to_string()).into_owned();
        tracing::warn!(error, reason = %self.scrub(reason), "kafka client error");
    }
}

/// Sets the user's properties on a client configuration.
pub fn apply(config: &mut ClientConfig, properties: &[(String, String)]) {
    for (key, value) in properties {
        config.set(key, value);
    }
}

/// A client context that only scrubs: for the clients that need no
/// callbacks of their own (`objmeta produce`'s admin client).
#[derive(Clone, Debug, Default)]
pub struct RedactingContext(pub Redactor);

impl ClientContext for RedactingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::admin::AdminClient;
    use rdkafka::consumer::BaseConsumer;

    fn properties(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What creating a client with these properties reports: the real
    /// librdkafka texts, not assumed ones.
    fn creation_error(pairs: &[(&str, &str)]) -> KafkaError {
        let properties = properties(pairs);
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        apply(&mut config, &properties);
        let redactor = Redactor::new(&properties);
        match config.create_with_context::<_, AdminClient<_>>(RedactingContext(redactor.clone())) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => redactor.error(e),
        }
    }

    #[test]
    fn refused_properties_leave_no_value_in_the_error() {
        for pairs in [
            &[("sasl.passwrd", "hunter2")][..],
            &[("sasl.password ", "hunter2")],
            &[("security.protocol", "hunter2")],
            &[("debug", "hunter2,all")],
            &[("fetch.wait.max.ms", "-7")],
            &[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "hunter2"),
            ],
            &[
                ("ssl.ca.location", "/nonexistent/hunter2"),
                ("security.protocol", "SSL"),
            ],
        ] {
            let error = creation_error(pairs);
            let shown = format!("{error} {error:?}");
            for (_, value) in pairs.iter() {
                assert!(!shown.contains(value), "{pairs:?}: {shown}");
            }
            assert!(
                shown.contains(REDACTED) || shown.contains(pairs[0].0),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_consumer_error_names_the_property() {
        let properties = properties(&[("sasl.passwrd", "hunter2")]);
        let mut config = ClientConfig::new();
        config.set("group.id", "g");
        apply(&mut config, &properties);
        let error = config
            .create::<BaseConsumer>()
            .map(|_| ())
            .map_err(|e| Redactor::new(&properties).error(e))
            .unwrap_err();
        let shown = error.to_string();
        assert!(
            shown.contains("sasl.passwrd") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn scrub_replaces_every_value_longest_first() {
        let redactor = Redactor::new(&properties(&[("a", "pass"), ("b", "password1"), ("c", "")]));
        assert_eq!(
            redactor.scrub("password1 and pass, twice pass"),
            "[redacted] and [redacted], twice [redacted]"
        );
        assert!(matches!(redactor.scrub("nothing here"), Cow::Borrowed(_)));
    }
}
