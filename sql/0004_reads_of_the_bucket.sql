-- objmeta schema, version 4: rows read from the bucket itself (backfill,
-- reconcile), the version scheme that orders them against rows from events,
-- and the checkpoints of listings (docs/reliability.md, "Reads of the
-- bucket").
--
-- A row's current state comes either from an event or from a read of the
-- bucket (a listing or a HeadObject):
--   * an event row has `read_at` NULL and `sequencer` the store's exact
--     modification time (MinIO: ns);
--   * a read row has `read_at` = when the read was started, on this
--     database's clock, and `sequencer` = what the store said, Last-Modified,
--     which has only whole seconds (in ns, so seconds compare with events);
--     `event_time` holds Last-Modified too, and `event_name` says which read
--     (`objmeta:Backfill`, `objmeta:Reconcile`);
--   * a reconcile that did not find the object writes a read tombstone:
--     `sequencer` = the listing's start in ns, `read_at` = that start.

ALTER TABLE object_metadata ADD COLUMN IF NOT EXISTS read_at timestamptz;

COMMENT ON COLUMN object_metadata.read_at IS
    'when the read of the bucket behind the current state started (database clock); NULL: the state came from an event';
COMMENT ON COLUMN object_metadata.sequencer IS
    'order of the current state: the event''s sequencer, or for a read Last-Modified (whole seconds) in ns; NULL: only deletes of versions seen';

-- A timestamp as ns since the epoch, the unit of sequencers.
CREATE OR REPLACE FUNCTION objmeta_ns(t timestamptz)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM t) * 1000000000)::bigint
$$;

-- Whether two current states are one and the same object state: both
-- creations in the same second with the same ETag, version and user
-- metadata. Used where whole seconds cannot order them: the precise one
-- (an event) is kept, and a read of that state changes nothing.
CREATE OR REPLACE FUNCTION objmeta_same_state(a object_metadata, b object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT a.sequencer IS NOT NULL AND b.sequencer IS NOT NULL
       AND a.deleted_at IS NULL AND b.deleted_at IS NULL
       AND a.sequencer / 1000000000 = b.sequencer / 1000000000
       AND a.etag IS NOT DISTINCT FROM b.etag
       AND a.version_id IS NOT DISTINCT FROM b.version_id
       AND a.user_metadata = b.user_metadata
$$;

-- Whether event row `e` is newer than read row `r`:
--   * a later second wins (Last-Modified has whole seconds);
--   * in the same second, the event of the very state the read saw wins
--     (it is the precise version of that state);
--   * otherwise, in the same second, the read wins when the event's
--     modification happened before the read started: the read then saw
--     that state or a newer one. An event at or after the read's start wins:
--     it may have happened after the read. (Whether it did cannot be told
--     when it happened while the read was in flight; the backfill then reads
--     the object again, see objmeta_read_outcome.)
CREATE OR REPLACE FUNCTION objmeta_event_beats_read(e object_metadata, r object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT e.sequencer / 1000000000 > r.sequencer / 1000000000
        OR (e.sequencer / 1000000000 = r.sequencer / 1000000000
            AND (objmeta_same_state(e, r) OR e.sequencer >= objmeta_ns(r.read_at)))
$$;

-- Whether `incoming`'s current state supersedes `stored`'s.
--   * two events: the total order of batch.rs's OrderKey (version 2);
--   * two reads: the later read wins (it saw the bucket later), except that a
--     read of the same state changes nothing;
--   * an event and a read: objmeta_event_beats_read.
CREATE OR REPLACE FUNCTION objmeta_supersedes(incoming object_metadata, stored object_metadata)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT incoming.sequencer IS NOT NULL AND (
        stored.sequencer IS NULL
        OR CASE
            WHEN incoming.read_at IS NULL AND stored.read_at IS NULL THEN
                (incoming.sequencer, incoming.deleted_at IS NOT NULL,
                 coalesce(incoming.kafka_partition, -1), coalesce(incoming.kafka_offset, -1))
              > (stored.sequencer, stored.deleted_at IS NOT NULL,
                 coalesce(stored.kafka_partition, -1), coalesce(stored.kafka_offset, -1))
            WHEN incoming.read_at IS NOT NULL AND stored.read_at IS NOT NULL THEN
                NOT objmeta_same_state(incoming, stored)
                AND (incoming.read_at, incoming.sequencer) > (stored.read_at, stored.sequencer)
            WHEN incoming.read_at IS NULL THEN objmeta_event_beats_read(incoming, stored)
            ELSE NOT objmeta_event_beats_read(stored, incoming)
        END)
$$;

-- What a read does to the stored row, for the summary of a backfill:
--   inserted  the object had no live row (missing from current_objects);
--   updated   the live row held an older state (stale);
--   unchanged the row already holds this state;
--   unsettled the row holds an event of the same second that happened
--             while the read may have been in flight: which is newer cannot
--             be told, so the caller reads the object again (a read started
--             after that event decides it);
--   skipped   the row holds a newer state.
CREATE OR REPLACE FUNCTION objmeta_read_outcome(incoming object_metadata, stored object_metadata)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN stored.bucket IS NULL THEN 'inserted'
        WHEN objmeta_supersedes(incoming, stored) THEN
            CASE WHEN stored.live THEN 'updated' ELSE 'inserted' END
        WHEN objmeta_same_state(incoming, stored) THEN 'unchanged'
        WHEN stored.read_at IS NULL AND stored.sequencer IS NOT NULL
             AND stored.sequencer / 1000000000 = incoming.sequencer / 1000000000
             AND stored.sequencer >= objmeta_ns(incoming.read_at) THEN 'unsettled'
        ELSE 'skipped'
    END
$$;

CREATE OR REPLACE VIEW current_objects AS
    SELECT bucket, key, version_id, size, etag, content_type,
           user_metadata, system_metadata, event_name, event_time, sequencer, updated_at,
           read_at
    FROM object_metadata
    WHERE live;

-- One row per listing in progress (a backfill or reconcile of one bucket and
-- prefix), so that an interrupted one resumes where it stopped. `position`
-- is the last key of the contiguous part of the listing whose rows are
-- written; it is updated in the transaction that writes them.
CREATE TABLE IF NOT EXISTS bucket_listings (
    bucket     text        NOT NULL,
    prefix     text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('backfill', 'reconcile')),
    started_at timestamptz NOT NULL DEFAULT now(),
    position   text,
    tally      jsonb       NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, prefix, kind)
);

COMMENT ON COLUMN bucket_listings.started_at IS
    'database clock when the listing first started; a resumed reconcile keeps it (rows written after it are never removed)';
COMMENT ON COLUMN bucket_listings.position IS
    'last key (S3 order) of the contiguous written part of the listing; NULL: nothing written yet';
COMMENT ON COLUMN bucket_listings.tally IS
    'what became of the objects up to position (listed, inserted, updated, unchanged, skipped, unsettled, gone, errors)';

-- The keys a reconcile in progress found in the bucket: what it must not
-- remove when it ends. Written with the rows; forgotten a chunk at a time
-- after the listing's row is gone (no cascade: one statement for millions
-- of keys would outlast the statement timeout), or before a new listing of
-- the same bucket and prefix starts.
CREATE TABLE IF NOT EXISTS bucket_listing_keys (
    bucket text NOT NULL,
    prefix text NOT NULL,
    kind   text NOT NULL,
    key    text NOT NULL,
    PRIMARY KEY (bucket, prefix, kind, key)
);

-- The outcome of every finished reconcile: the drift it found.
CREATE TABLE IF NOT EXISTS reconcile_runs (
    bucket      text        NOT NULL,
    prefix      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    listed      bigint      NOT NULL,
    missing     bigint      NOT NULL,
    stale       bigint      NOT NULL,
    removed     bigint      NOT NULL,
    errors      bigint      NOT NULL,
    PRIMARY KEY (bucket, prefix, started_at)
);

COMMENT ON COLUMN reconcile_runs.missing IS 'objects in the bucket without a live row';
COMMENT ON COLUMN reconcile_runs.stale IS 'live rows that held an older state than the bucket';
COMMENT ON COLUMN reconcile_runs.removed IS 'live rows of objects the listing did not find';
