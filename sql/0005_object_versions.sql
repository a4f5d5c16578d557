-- objmeta schema, version 5: every version of every object, the current row
-- derived from them as S3 sees it, and the history of every change
-- (docs/versions.md).
--
-- object_versions holds, per (bucket, key, version id), two registers, each
-- "newest wins" under the order of objmeta_newer (sql/0004's rules):
--   * the version's state: the newest creation of that version, delete
--     marker, or removal naming it (a removal without a version id, as in an
--     unversioned bucket, names the version 'null'); `deleted_at` set for a
--     removal;
--   * the version's permanent delete (`ObjectRemoved:Delete` with that
--     version id): the version is gone when that delete is newer than its
--     state. Remembered when it arrives before the creation.
-- object_metadata is then a function of the object's version rows
-- (objmeta_derive): the newest version that is not gone; not live when that
-- is a removal, or when every version is gone. So deleting the newest
-- version reveals the previous one, deleting a delete marker revives the
-- object, and whatever the order or batch split of the changes, the rows
-- end the same.

CREATE TABLE IF NOT EXISTS object_versions (
    bucket          text        NOT NULL,
    key             text        NOT NULL,
    version_id      text        NOT NULL,
    size            bigint,
    etag            text,
    content_type    text,
    user_metadata   jsonb       NOT NULL DEFAULT '{}',
    system_metadata jsonb       NOT NULL DEFAULT '{}',
    event_name      text,
    event_time      timestamptz,
    sequencer       bigint,
    deleted_at      timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    read_at         timestamptz,
    version_deleted_by        text,
    version_deleted_at        timestamptz,
    version_deleted_sequencer bigint,
    version_deleted_partition integer,
    version_deleted_offset    bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key, version_id)
);

ALTER TABLE object_versions
    ADD COLUMN IF NOT EXISTS delete_marker boolean GENERATED ALWAYS AS (
        deleted_at IS NOT NULL AND event_name LIKE '%DeleteMarker%'
    ) STORED,
    ADD COLUMN IF NOT EXISTS gone boolean GENERATED ALWAYS AS (
        version_deleted_sequencer IS NOT NULL AND (
            sequencer IS NULL
            OR (version_deleted_sequencer, true,
                coalesce(version_deleted_partition, -1), coalesce(version_deleted_offset, -1))
             > (sequencer, deleted_at IS NOT NULL,
                coalesce(kafka_partition, -1), coalesce(kafka_offset, -1)))
    ) STORED;

COMMENT ON TABLE object_versions IS
    'one row per object version (''null'' for an unversioned object); object_metadata is derived from these rows';
COMMENT ON COLUMN object_versions.version_id IS
    'the store''s version id; ''null'' (the string S3 uses) for an unversioned object';
COMMENT ON COLUMN object_versions.sequencer IS
    'order of the version''s state (as object_metadata.sequencer); NULL: only its permanent delete was seen';
COMMENT ON COLUMN object_versions.deleted_at IS
    'event time when the version''s state is a removal: a delete marker, or a removal of the object naming this version';
COMMENT ON COLUMN object_versions.delete_marker IS 'the version is a delete marker';
COMMENT ON COLUMN object_versions.version_deleted_by IS
    'event that permanently deleted this version (ObjectRemoved:Delete with its version id)';
COMMENT ON COLUMN object_versions.gone IS
    'permanently deleted: its permanent delete is newer than its state';

-- The order rules of sql/0004, for any row type with the columns they read
-- (object_metadata and object_versions): one definition for both tables.
-- The typed functions of 0004 (which replicas of the previous version call)
-- become these.
CREATE OR REPLACE FUNCTION objmeta_same(a anyelement, b anyelement)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (a).sequencer IS NOT NULL AND (b).sequencer IS NOT NULL
       AND (a).deleted_at IS NULL AND (b).deleted_at IS NULL
       AND (a).sequencer / 1000000000 = (b).sequencer / 1000000000
       AND (a).etag IS NOT DISTINCT FROM (b).etag
       AND (a).version_id IS NOT DISTINCT FROM (b).version_id
       AND (a).user_metadata = (b).user_metadata
$$;

CREATE OR REPLACE FUNCTION objmeta_event_newer(e anyelement, r anyelement)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (e).sequencer / 1000000000 > (r).sequencer / 1000000000
        OR ((e).sequencer / 1000000000 = (r).sequencer / 1000000000
            AND (objmeta_same(e, r) OR (e).sequencer >= objmeta_ns((r).read_at)))
$$;

CREATE OR REPLACE FUNCTION objmeta_newer(incoming anyelement, stored anyelement)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (incoming).sequencer IS NOT NULL AND (
        (stored).sequencer IS NULL
        OR CASE
            WHEN (incoming).read_at IS NULL AND (stored).read_at IS NULL THEN
                ((incoming).sequencer, (incoming).deleted_at IS NOT NULL,
                 coalesce((incoming).kafka_partition, -1), coalesce((incoming).kafka_offset, -1))
              > ((stored).sequencer, (stored).deleted_at IS NOT NULL,
                 coalesce((stored).kafka_partition, -1), coalesce((stored).kafka_offset, -1))
            WHEN (incoming).read_at IS NOT NULL AND (stored).read_at IS NOT NULL THEN
                NOT objmeta_same(incoming, stored)
                AND ((incoming).read_at, (incoming).sequencer) > ((stored).read_at, (stored).sequencer)
            WHEN (incoming).read_at IS NULL THEN objmeta_event_newer(incoming, stored)
            ELSE NOT objmeta_event_newer(stored, incoming)
        END)
$$;

CREATE OR REPLACE FUNCTION objmeta_same_state(a object_metadata, b object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT objmeta_same(a, b) $$;

CREATE OR REPLACE FUNCTION objmeta_event_beats_read(e object_metadata, r object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT objmeta_event_newer(e, r) $$;

CREATE OR REPLACE FUNCTION objmeta_supersedes(incoming object_metadata, stored object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT objmeta_newer(incoming, stored) $$;

-- Whether `incoming`'s permanent delete is newer than `stored`'s.
CREATE OR REPLACE FUNCTION objmeta_delete_supersedes(incoming object_versions, stored object_versions)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT incoming.version_deleted_sequencer IS NOT NULL AND (
        stored.version_deleted_sequencer IS NULL
        OR (incoming.version_deleted_sequencer,
            coalesce(incoming.version_deleted_partition, -1), coalesce(incoming.version_deleted_offset, -1))
         > (stored.version_deleted_sequencer,
            coalesce(stored.version_deleted_partition, -1), coalesce(stored.version_deleted_offset, -1)))
$$;

-- The current row of each given object, from its version rows: the newest
-- version that is not gone (a removal: not live); when every version is
-- gone, the newest of them, marked deleted in `deleted_versions` (not
-- live); with only permanent deletes seen, a row without a state. The rows
-- are written only where they differ from the stored ones; returns whether
-- each written row is live.
--
-- Versions are ordered by their state's (sequencer, removal, Kafka
-- position, read start): within one version objmeta_newer decides
-- (reads and events of one state compare there), across versions
-- modification times do.
CREATE OR REPLACE FUNCTION objmeta_derive(buckets text[], keys text[])
RETURNS TABLE (live boolean) LANGUAGE sql VOLATILE AS $$
    WITH touched AS (
        SELECT DISTINCT u.bucket, u.key FROM unnest(buckets, keys) AS u(bucket, key)
    ), top AS (
        SELECT DISTINCT ON (v.bucket, v.key) v.*
        FROM touched t
        JOIN object_versions v ON v.bucket = t.bucket AND v.key = t.key
        ORDER BY v.bucket, v.key,
                 (v.sequencer IS NOT NULL AND NOT v.gone) DESC,
                 v.sequencer DESC NULLS LAST,
                 v.deleted_at IS NOT NULL DESC,
                 coalesce(v.kafka_partition, -1) DESC, coalesce(v.kafka_offset, -1) DESC,
                 v.read_at DESC NULLS LAST,
                 v.version_deleted_sequencer DESC NULLS LAST,
                 v.version_id DESC
    )
    INSERT INTO object_metadata AS t (
        bucket, key, version_id, size, etag, content_type, user_metadata,
        system_metadata, event_name, event_time, sequencer, deleted_at,
        kafka_partition, kafka_offset, deleted_versions, read_at, updated_at)
    SELECT v.bucket, v.key, CASE WHEN v.sequencer IS NOT NULL THEN nullif(v.version_id, 'null') END,
           v.size, v.etag, v.content_type,
           v.user_metadata, v.system_metadata, v.event_name, v.event_time, v.sequencer,
           v.deleted_at, v.kafka_partition, v.kafka_offset,
           CASE WHEN v.gone OR v.sequencer IS NULL THEN jsonb_build_object(
               coalesce(nullif(v.version_id, 'null'), ''), jsonb_build_object(
                   'sequencer', v.version_deleted_sequencer,
                   'partition', v.version_deleted_partition,
                   'offset', v.version_deleted_offset,
                   'event_time', v.version_deleted_at))
           ELSE '{}'::jsonb END,
           v.read_at, now()
    FROM top v
    ON CONFLICT (bucket, key) DO UPDATE SET
        version_id = excluded.version_id, size = excluded.size, etag = excluded.etag,
        content_type = excluded.content_type, user_metadata = excluded.user_metadata,
        system_metadata = excluded.system_metadata, event_name = excluded.event_name,
        event_time = excluded.event_time, sequencer = excluded.sequencer,
        deleted_at = excluded.deleted_at, kafka_partition = excluded.kafka_partition,
        kafka_offset = excluded.kafka_offset, deleted_versions = excluded.deleted_versions,
        read_at = excluded.read_at, updated_at = excluded.updated_at
    WHERE (t.version_id, t.size, t.etag, t.content_type, t.user_metadata, t.system_metadata,
           t.event_name, t.event_time, t.sequencer, t.deleted_at, t.kafka_partition,
           t.kafka_offset, t.deleted_versions, t.read_at)
          IS DISTINCT FROM
          (excluded.version_id, excluded.size, excluded.etag, excluded.content_type,
           excluded.user_metadata, excluded.system_metadata, excluded.event_name,
           excluded.event_time, excluded.sequencer, excluded.deleted_at,
           excluded.kafka_partition, excluded.kafka_offset, excluded.deleted_versions,
           excluded.read_at)
    RETURNING t.live
$$;

-- Every change objmeta received, append-only: superseded and late ones
-- too, so that as-of queries ordered by sequencer are right whatever the
-- batches were. Unique on the change itself: a replay adds nothing.
CREATE TABLE IF NOT EXISTS object_history (
    bucket          text        NOT NULL,
    key             text        NOT NULL,
    version_id      text        NOT NULL,
    event_name      text        NOT NULL,
    sequencer       bigint      NOT NULL,
    event_time      timestamptz NOT NULL,
    removal         boolean     NOT NULL,
    size            bigint,
    etag            text,
    content_type    text,
    user_metadata   jsonb       NOT NULL DEFAULT '{}',
    system_metadata jsonb       NOT NULL DEFAULT '{}',
    kafka_partition integer,
    kafka_offset    bigint,
    read_at         timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key, sequencer, version_id, event_name)
);

COMMENT ON TABLE object_history IS
    'every distinct change received (events and reads of the bucket), append-only; purged by --history-retention';
COMMENT ON COLUMN object_history.removal IS
    'the change removed the version or the object (metadata empty)';
COMMENT ON COLUMN object_history.kafka_partition IS
    'Kafka position of the event that brought the change first; NULL for a read of the bucket (read_at set)';

-- The primary key serves the history of one object and its as-of queries
-- (bucket, key, then sequencer); this index the changes of a period.
CREATE INDEX IF NOT EXISTS object_history_event_time_idx ON object_history (event_time);

-- Writes version rows, each merged into the stored one: its state is
-- replaced only by one that supersedes it (objmeta_newer), its permanent
-- delete only by a newer one. When an event replaces a read of the very
-- same state, the row keeps `read_at`: the bucket was seen in that state
-- then, which a redelivered older event must still lose to. A row whose
-- merge changes nothing is not updated at all (no new row version, no index
-- churn). The one writer of object_versions: objmeta's batches and reads,
-- and the mirror of earlier replicas' writes below.
CREATE OR REPLACE FUNCTION objmeta_upsert_versions(
    in_bucket text[], in_key text[], in_version_id text[], in_size int8[], in_etag text[],
    in_content_type text[], in_user_metadata text[], in_system_metadata text[],
    in_event_name text[], in_event_time timestamptz[], in_sequencer int8[],
    in_deleted_at timestamptz[], in_kafka_partition int4[], in_kafka_offset int8[],
    in_read_at timestamptz[], in_deleted_by text[], in_deleted_time timestamptz[],
    in_deleted_sequencer int8[], in_deleted_partition int4[], in_deleted_offset int8[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO object_versions AS t (
        bucket, key, version_id, size, etag, content_type, user_metadata,
        system_metadata, event_name, event_time, sequencer, deleted_at,
        kafka_partition, kafka_offset, read_at, version_deleted_by, version_deleted_at,
        version_deleted_sequencer, version_deleted_partition, version_deleted_offset)
    SELECT u.bucket, u.key, u.version_id, u.size, u.etag, u.content_type,
           u.user_metadata::jsonb, u.system_metadata::jsonb, u.event_name, u.event_time,
           u.sequencer, u.deleted_at, u.kafka_partition, u.kafka_offset, u.read_at,
           u.d_by, u.d_at, u.d_seq, u.d_part, u.d_off
    FROM unnest(in_bucket, in_key, in_version_id, in_size, in_etag, in_content_type,
                in_user_metadata, in_system_metadata, in_event_name, in_event_time,
                in_sequencer, in_deleted_at, in_kafka_partition, in_kafka_offset, in_read_at,
                in_deleted_by, in_deleted_time, in_deleted_sequencer, in_deleted_partition,
                in_deleted_offset)
         AS u(bucket, key, version_id, size, etag, content_type, user_metadata,
              system_metadata, event_name, event_time, sequencer, deleted_at,
              kafka_partition, kafka_offset, read_at, d_by, d_at, d_seq, d_part, d_off)
    ON CONFLICT (bucket, key, version_id) DO UPDATE SET
        (size, etag, content_type, user_metadata, system_metadata, event_name, event_time,
         sequencer, deleted_at, kafka_partition, kafka_offset) = (
            SELECT (w).size, (w).etag, (w).content_type, (w).user_metadata,
                   (w).system_metadata, (w).event_name, (w).event_time, (w).sequencer,
                   (w).deleted_at, (w).kafka_partition, (w).kafka_offset
            FROM (SELECT CASE WHEN objmeta_newer(excluded, t) THEN excluded ELSE t END) AS s(w)),
        read_at = CASE WHEN NOT objmeta_newer(excluded, t) THEN t.read_at
                       WHEN objmeta_same(excluded, t) THEN greatest(excluded.read_at, t.read_at)
                       ELSE excluded.read_at END,
        (version_deleted_by, version_deleted_at, version_deleted_sequencer,
         version_deleted_partition, version_deleted_offset) = (
            SELECT (w).version_deleted_by, (w).version_deleted_at, (w).version_deleted_sequencer,
                   (w).version_deleted_partition, (w).version_deleted_offset
            FROM (SELECT CASE WHEN objmeta_delete_supersedes(excluded, t) THEN excluded ELSE t END)
                 AS d(w)),
        updated_at = now()
    WHERE objmeta_newer(excluded, t) OR objmeta_delete_supersedes(excluded, t);
END
$$;

-- A batch's write of version rows and of the rows derived from them, in one
-- round trip: how many derived rows became live and how many not.
CREATE OR REPLACE FUNCTION objmeta_write_versions(
    in_bucket text[], in_key text[], in_version_id text[], in_size int8[], in_etag text[],
    in_content_type text[], in_user_metadata text[], in_system_metadata text[],
    in_event_name text[], in_event_time timestamptz[], in_sequencer int8[],
    in_deleted_at timestamptz[], in_kafka_partition int4[], in_kafka_offset int8[],
    in_read_at timestamptz[], in_deleted_by text[], in_deleted_time timestamptz[],
    in_deleted_sequencer int8[], in_deleted_partition int4[], in_deleted_offset int8[])
RETURNS TABLE (became_live bigint, became_not_live bigint) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM objmeta_upsert_versions(
        in_bucket, in_key, in_version_id, in_size, in_etag, in_content_type,
        in_user_metadata, in_system_metadata, in_event_name, in_event_time, in_sequencer,
        in_deleted_at, in_kafka_partition, in_kafka_offset, in_read_at, in_deleted_by,
        in_deleted_time, in_deleted_sequencer, in_deleted_partition, in_deleted_offset);
    RETURN QUERY
        SELECT count(*) FILTER (WHERE d.live), count(*) FILTER (WHERE NOT d.live)
        FROM objmeta_derive(in_bucket, in_key) AS d;
END
$$;

-- Appends changes to object_history; one already there is left alone.
CREATE OR REPLACE FUNCTION objmeta_record_history(
    in_bucket text[], in_key text[], in_version_id text[], in_event_name text[],
    in_sequencer int8[], in_event_time timestamptz[], in_removal bool[], in_size int8[],
    in_etag text[], in_content_type text[], in_user_metadata text[],
    in_system_metadata text[], in_kafka_partition int4[], in_kafka_offset int8[],
    in_read_at timestamptz[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO object_history (
        bucket, key, version_id, event_name, sequencer, event_time, removal, size, etag,
        content_type, user_metadata, system_metadata, kafka_partition, kafka_offset, read_at)
    SELECT u.bucket, u.key, u.version_id, u.event_name, u.sequencer, u.event_time, u.removal,
           u.size, u.etag, u.content_type, u.user_metadata::jsonb, u.system_metadata::jsonb,
           u.kafka_partition, u.kafka_offset, u.read_at
    FROM unnest(in_bucket, in_key, in_version_id, in_event_name, in_sequencer, in_event_time,
                in_removal, in_size, in_etag, in_content_type, in_user_metadata,
                in_system_metadata, in_kafka_partition, in_kafka_offset, in_read_at)
         AS u(bucket, key, version_id, event_name, sequencer, event_time, removal, size, etag,
              content_type, user_metadata, system_metadata, kafka_partition, kafka_offset,
              read_at)
    ON CONFLICT DO NOTHING;
END
$$;

-- Every change beside the one before it of the same object (NULL for the
-- first), for "what changed" questions. A filter on the change's columns
-- (event_time, bucket, key) applies before the previous change is looked up
-- (one index probe each, on the primary key).
CREATE OR REPLACE VIEW object_changes AS
    SELECT h.bucket, h.key, h.version_id, h.event_name, h.sequencer, h.event_time, h.removal,
           h.user_metadata, h.system_metadata, h.size, h.etag,
           p.event_name AS previous_event_name, p.event_time AS previous_event_time,
           p.user_metadata AS previous_user_metadata,
           p.system_metadata AS previous_system_metadata
    FROM object_history h
    LEFT JOIN LATERAL (
        SELECT event_name, event_time, user_metadata, system_metadata FROM object_history p
        WHERE p.bucket = h.bucket AND p.key = h.key AND p.sequencer < h.sequencer
        ORDER BY p.sequencer DESC LIMIT 1) p ON true;

-- What the retention purge (purge.rs) looks for: tombstones by when they last
-- changed, permanently deleted versions by when they were deleted.
CREATE INDEX IF NOT EXISTS object_metadata_tombstones_idx
    ON object_metadata (updated_at) WHERE NOT live;
CREATE INDEX IF NOT EXISTS object_versions_gone_idx
    ON object_versions (version_deleted_at) WHERE gone;

-- The current rows become the first versions: what an upgraded database
-- knew before (the versions they replaced were never kept). History starts
-- with them too.
INSERT INTO object_versions (
    bucket, key, version_id, size, etag, content_type, user_metadata, system_metadata,
    event_name, event_time, sequencer, deleted_at, kafka_partition, kafka_offset, read_at,
    version_deleted_by, version_deleted_at, version_deleted_sequencer,
    version_deleted_partition, version_deleted_offset)
SELECT m.bucket, m.key, coalesce(m.version_id, 'null'), m.size, m.etag, m.content_type,
       m.user_metadata, m.system_metadata, m.event_name, m.event_time, m.sequencer,
       m.deleted_at, m.kafka_partition, m.kafka_offset, m.read_at,
       CASE WHEN d.entry IS NOT NULL THEN 's3:ObjectRemoved:Delete' END,
       (d.entry->>'event_time')::timestamptz, (d.entry->>'sequencer')::bigint,
       (d.entry->>'partition')::integer, (d.entry->>'offset')::bigint
FROM object_metadata m
LEFT JOIN LATERAL (
    SELECT m.deleted_versions -> coalesce(m.version_id, '') AS entry
) d ON true
WHERE m.sequencer IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO object_history (
    bucket, key, version_id, event_name, sequencer, event_time, removal, size, etag,
    content_type, user_metadata, system_metadata, kafka_partition, kafka_offset, read_at)
SELECT bucket, key, coalesce(version_id, 'null'), event_name, sequencer, event_time,
       deleted_at IS NOT NULL, size, etag, content_type, user_metadata, system_metadata,
       kafka_partition, kafka_offset, read_at
FROM object_metadata
WHERE sequencer IS NOT NULL
ON CONFLICT DO NOTHING;

-- Replicas of the previous objmeta keep writing object_metadata by its own
-- merge while a rolling upgrade runs, and know nothing of versions. Their
-- writes are mirrored into object_versions (the row's state, and its
-- deletes of versions) and object_history, and the row is derived again
-- (a delete of the current version they tombstone reveals the previous
-- one), so that the rows this version derives include them. This
-- version's own connections say `objmeta.derives = on` (sink::connect)
-- and are not mirrored, nor is the derive's own write (trigger depth 1).
CREATE OR REPLACE FUNCTION objmeta_mirror_earlier_writer() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    deleted record;
BEGIN
    IF NEW.sequencer IS NOT NULL THEN
        PERFORM objmeta_upsert_versions(
            ARRAY[NEW.bucket], ARRAY[NEW.key], ARRAY[coalesce(NEW.version_id, 'null')],
            ARRAY[NEW.size], ARRAY[NEW.etag], ARRAY[NEW.content_type],
            ARRAY[NEW.user_metadata::text], ARRAY[NEW.system_metadata::text],
            ARRAY[NEW.event_name], ARRAY[NEW.event_time], ARRAY[NEW.sequencer],
            ARRAY[NEW.deleted_at], ARRAY[NEW.kafka_partition], ARRAY[NEW.kafka_offset],
            ARRAY[NEW.read_at], ARRAY[NULL::text], ARRAY[NULL::timestamptz],
            ARRAY[NULL::int8], ARRAY[NULL::int4], ARRAY[NULL::int8]);
        PERFORM objmeta_record_history(
            ARRAY[NEW.bucket], ARRAY[NEW.key], ARRAY[coalesce(NEW.version_id, 'null')],
            ARRAY[NEW.event_name], ARRAY[NEW.sequencer], ARRAY[NEW.event_time],
            ARRAY[NEW.deleted_at IS NOT NULL], ARRAY[NEW.size], ARRAY[NEW.etag],
            ARRAY[NEW.content_type], ARRAY[NEW.user_metadata::text],
            ARRAY[NEW.system_metadata::text], ARRAY[NEW.kafka_partition],
            ARRAY[NEW.kafka_offset], ARRAY[NEW.read_at]);
    END IF;
    FOR deleted IN SELECT e.key AS version, e.value AS entry FROM jsonb_each(NEW.deleted_versions) e
    LOOP
        PERFORM objmeta_upsert_versions(
            ARRAY[NEW.bucket], ARRAY[NEW.key], ARRAY[coalesce(nullif(deleted.version, ''), 'null')],
            ARRAY[NULL::int8], ARRAY[NULL::text], ARRAY[NULL::text], ARRAY['{}'],
            ARRAY['{}'], ARRAY[NULL::text], ARRAY[NULL::timestamptz], ARRAY[NULL::int8],
            ARRAY[NULL::timestamptz], ARRAY[NULL::int4], ARRAY[NULL::int8],
            ARRAY[NULL::timestamptz], ARRAY['s3:ObjectRemoved:Delete'],
            ARRAY[(deleted.entry->>'event_time')::timestamptz],
            ARRAY[(deleted.entry->>'sequencer')::int8],
            ARRAY[(deleted.entry->>'partition')::int4], ARRAY[(deleted.entry->>'offset')::int8]);
    END LOOP;
    PERFORM count(*) FROM objmeta_derive(ARRAY[NEW.bucket], ARRAY[NEW.key]);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS objmeta_mirror_earlier_writer ON object_metadata;
CREATE TRIGGER objmeta_mirror_earlier_writer
    AFTER INSERT OR UPDATE ON object_metadata
    FOR EACH ROW
    WHEN (pg_trigger_depth() = 0
          AND current_setting('objmeta.derives', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION objmeta_mirror_earlier_writer();
