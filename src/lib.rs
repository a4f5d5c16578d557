//! objmeta: keeps a PostgreSQL table of every MinIO object's current metadata,
//! fed by MinIO bucket notifications on Kafka.

pub mod event;
