-- objmeta schema, version 2: an object's row is a function of the set of its
-- events, whatever their order, duplicates or batch split (README, "Ordering
-- rules").
--
-- The row keeps two parts, each "newest wins" under one total order:
--   * the current state: the newest creation or unconditional removal (the
--     usual columns, deleted_at set for a removal), ordered by
--     (sequencer, removal, kafka_partition, kafka_offset);
--   * deleted_versions: per version id, the newest delete of that one version
--     (ObjectRemoved:Delete with a versionId) that is newer than the current
--     state.
-- The object is live when its current state is a creation whose version has
-- no such delete. A row may have no current state yet (only a version delete
-- seen): its sequencer is NULL.

ALTER TABLE object_metadata
    ADD COLUMN IF NOT EXISTS kafka_partition integer,
    ADD COLUMN IF NOT EXISTS kafka_offset bigint,
    ADD COLUMN IF NOT EXISTS deleted_versions jsonb NOT NULL DEFAULT '{}',
    ALTER COLUMN event_name DROP NOT NULL,
    ALTER COLUMN event_time DROP NOT NULL,
    ALTER COLUMN sequencer DROP NOT NULL;

ALTER TABLE object_metadata
    ADD COLUMN IF NOT EXISTS live boolean GENERATED ALWAYS AS (
        sequencer IS NOT NULL
        AND deleted_at IS NULL
        AND NOT deleted_versions ? coalesce(version_id, '')
    ) STORED;

COMMENT ON COLUMN object_metadata.sequencer IS 'sequencer of the current state''s event (NULL: only deletes of versions seen)';
COMMENT ON COLUMN object_metadata.kafka_partition IS 'Kafka partition of the current state''s event (NULL: not from Kafka)';
COMMENT ON COLUMN object_metadata.kafka_offset IS 'Kafka offset of the current state''s event; breaks ties of equal sequencers';
COMMENT ON COLUMN object_metadata.deleted_versions IS 'version id -> {sequencer, partition, offset, event_time} of the newest delete of that version newer than the current state';
COMMENT ON COLUMN object_metadata.live IS 'the object exists: a creation is current and its version is not deleted';

-- Whether `incoming`'s current state supersedes `stored`'s: the total order
-- of batch.rs's OrderKey. A missing position sorts below any position.
CREATE OR REPLACE FUNCTION objmeta_supersedes(incoming object_metadata, stored object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT incoming.sequencer IS NOT NULL AND (
        stored.sequencer IS NULL
        OR (incoming.sequencer, incoming.deleted_at IS NOT NULL,
            coalesce(incoming.kafka_partition, -1), coalesce(incoming.kafka_offset, -1))
         > (stored.sequencer, stored.deleted_at IS NOT NULL,
            coalesce(stored.kafka_partition, -1), coalesce(stored.kafka_offset, -1)))
$$;

-- The version deletes of the merged row: per version the newest of both
-- sides, kept only while newer than the merged current state.
CREATE OR REPLACE FUNCTION objmeta_merged_deleted_versions(incoming object_metadata, stored object_metadata)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    WITH current_state AS (
        SELECT CASE WHEN objmeta_supersedes(incoming, stored) THEN incoming ELSE stored END AS r
    ), newest AS (
        SELECT DISTINCT ON (version) version, entry
        FROM (SELECT * FROM jsonb_each(stored.deleted_versions)
              UNION ALL
              SELECT * FROM jsonb_each(incoming.deleted_versions)) AS e(version, entry)
        ORDER BY version,
                 (entry->>'sequencer')::bigint DESC,
                 coalesce((entry->>'partition')::integer, -1) DESC,
                 coalesce((entry->>'offset')::bigint, -1) DESC
    )
    SELECT coalesce(jsonb_object_agg(version, entry), '{}'::jsonb)
    FROM newest, current_state
    WHERE (r).sequencer IS NULL
       OR ((entry->>'sequencer')::bigint, true,
           coalesce((entry->>'partition')::integer, -1), coalesce((entry->>'offset')::bigint, -1))
        > ((r).sequencer, (r).deleted_at IS NOT NULL,
           coalesce((r).kafka_partition, -1), coalesce((r).kafka_offset, -1))
$$;

CREATE OR REPLACE VIEW current_objects AS
    SELECT bucket, key, version_id, size, etag, content_type,
           user_metadata, system_metadata, event_name, event_time, sequencer, updated_at
    FROM object_metadata
    WHERE live;
