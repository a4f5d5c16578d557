-- objmeta schema, version 3: one dead letter per refused *record*, not per
-- message. Two records of one message that the database refuses used to
-- share the key (topic, partition, "offset"), and the second was dropped.
--
-- Users keep querying `dead_letters`: it is now the parent of
-- `dead_letter_records` (table inheritance), so a plain
-- `SELECT … FROM dead_letters` returns every dead letter, with its new
-- `record` column (the index of the record in the message's `Records`; 0
-- for a message that could not be parsed as a whole). Privileges granted on
-- `dead_letters` cover the rows of its child.
--
-- Rolling upgrades: replicas of the previous version keep running this
-- statement against `dead_letters` itself:
--     INSERT INTO dead_letters (topic, partition, "offset", message_key, payload, reason)
--     SELECT … ON CONFLICT (topic, partition, "offset") DO NOTHING
-- Its conflict target needs a non-partial unique index on exactly those
-- columns of `dead_letters`, so the old primary key stays. A BEFORE INSERT
-- trigger moves each such row into `dead_letter_records` (record 0), so that
-- every dead letter lives in one table under one key and a message
-- dead-lettered by an old and a new replica is kept once. This version
-- writes `dead_letter_records` directly.

ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS record integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN dead_letters.record IS
    'index of the refused record in the message''s Records array; 0 when the message as a whole could not be parsed';

CREATE TABLE IF NOT EXISTS dead_letter_records (
    PRIMARY KEY (topic, partition, "offset", record)
) INHERITS (dead_letters);

COMMENT ON TABLE dead_letter_records IS
    'where dead letters are stored (query them through the parent, dead_letters)';

-- Existing dead letters move to the child: record 0, the only one the
-- previous versions could keep.
WITH moved AS (
    DELETE FROM ONLY dead_letters RETURNING *
)
INSERT INTO dead_letter_records SELECT * FROM moved
ON CONFLICT DO NOTHING;

-- `SET search_path FROM CURRENT`: the function finds `dead_letter_records`
-- in the schema the migration ran in, whatever the inserting session's path.
CREATE OR REPLACE FUNCTION dead_letters_into_records() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO dead_letter_records
        (topic, partition, "offset", record, message_key, payload, reason, created_at)
    VALUES
        (NEW.topic, NEW.partition, NEW."offset", NEW.record, NEW.message_key, NEW.payload,
         NEW.reason, NEW.created_at)
    ON CONFLICT DO NOTHING;
    RETURN NULL; -- stored in the child; nothing stays in the parent itself
END
$$;

DROP TRIGGER IF EXISTS dead_letters_into_records ON dead_letters;
CREATE TRIGGER dead_letters_into_records
    BEFORE INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION dead_letters_into_records();
