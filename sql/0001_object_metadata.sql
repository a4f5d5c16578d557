-- objmeta schema, version 1: the current-object table, its live view and the
-- dead-letter table. Applied by `objmeta migrate` / `objmeta run` under an
-- advisory lock, inside the schema named by DATABASE_SCHEMA.

-- One row per object ever seen. A removal keeps the row as a tombstone
-- (deleted_at set, metadata cleared) so that an older event arriving late
-- cannot bring the object back: its sequencer loses against the stored one.
CREATE TABLE IF NOT EXISTS object_metadata (
    bucket          text        NOT NULL,
    key             text        NOT NULL,
    version_id      text,
    size            bigint,
    etag            text,
    content_type    text,
    user_metadata   jsonb       NOT NULL DEFAULT '{}',
    system_metadata jsonb       NOT NULL DEFAULT '{}',
    event_name      text        NOT NULL,
    event_time      timestamptz NOT NULL,
    sequencer       bigint      NOT NULL,
    deleted_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);

COMMENT ON COLUMN object_metadata.key IS 'object name, decoded from MinIO''s query-escaped form';
COMMENT ON COLUMN object_metadata.user_metadata IS 'x-amz-meta-* entries, prefix stripped, keys lower-cased';
COMMENT ON COLUMN object_metadata.system_metadata IS 'other metadata entries (content-type, …), keys lower-cased';
COMMENT ON COLUMN object_metadata.sequencer IS 'MinIO sequencer (hex modification time in ns) of the event behind this state';
COMMENT ON COLUMN object_metadata.deleted_at IS 'event time of the removal when the newest event removed the object';

-- jsonb_path_ops: smaller and faster than the default operator class, and it
-- serves the containment queries users write (user_metadata @> '{"id":"1843"}').
CREATE INDEX IF NOT EXISTS object_metadata_user_metadata_idx
    ON object_metadata USING gin (user_metadata jsonb_path_ops);

CREATE OR REPLACE VIEW current_objects AS
    SELECT bucket, key, version_id, size, etag, content_type,
           user_metadata, system_metadata, event_name, event_time, sequencer, updated_at
    FROM object_metadata
    WHERE deleted_at IS NULL;

-- Every message objmeta could not use, with its raw bytes and the reason.
-- The primary key makes a redelivered bad message land once.
CREATE TABLE IF NOT EXISTS dead_letters (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    message_key bytea,
    payload     bytea,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
