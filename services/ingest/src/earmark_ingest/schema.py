"""Submission table, applied by earmark_runtime.db.migrate.

`published` is a one-row outbox: the row is committed first, the event is
published next, and the flag set last. A crash in between leaves the row
unpublished, and the outbox sweeper publishes it again (the stream drops the
duplicate if the first publish did land).
"""

SCHEMA = "ingest"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE submissions (
        submission_id     uuid PRIMARY KEY,
        external_id       text NOT NULL,
        filename          text NOT NULL DEFAULT '',
        state             smallint NOT NULL,
        rejection_code    smallint NOT NULL DEFAULT 0,
        rejection_message text NOT NULL DEFAULT '',
        duplicate_of      text NOT NULL DEFAULT '',
        track_id          uuid,
        title             text NOT NULL DEFAULT '',
        artist            text NOT NULL DEFAULT '',
        album             text NOT NULL DEFAULT '',
        isrc              text NOT NULL DEFAULT '',
        extra             jsonb NOT NULL DEFAULT '{}',
        duration_s        double precision NOT NULL DEFAULT 0,
        size_bytes        bigint NOT NULL DEFAULT 0,
        source_sha256     text NOT NULL DEFAULT '',
        source_format     text NOT NULL DEFAULT '',
        blob_key          text NOT NULL DEFAULT '',
        published         boolean NOT NULL DEFAULT false,
        created_at        timestamptz NOT NULL DEFAULT now(),
        updated_at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX submissions_unpublished_idx ON submissions (created_at) WHERE NOT published;
    CREATE INDEX submissions_external_id_idx ON submissions (external_id);
    CREATE INDEX submissions_sha_idx ON submissions (source_sha256);
    """,
    # A client that retries an upload whose reply it lost gets the same submission
    # back: one live submission per (external_id, content).
    """
    CREATE UNIQUE INDEX submissions_live_upload_idx ON submissions (external_id, source_sha256)
        WHERE state <> 4;
    """,
    # DELETED (5) submissions are no longer live either: the file may come again.
    """
    DROP INDEX submissions_live_upload_idx;
    CREATE UNIQUE INDEX submissions_live_upload_idx ON submissions (external_id, source_sha256)
        WHERE state NOT IN (4, 5);
    """,
    # When each pipeline stage finished: {"validated": ts, "fingerprinted": ts, ...}.
    """
    ALTER TABLE submissions ADD COLUMN stages jsonb NOT NULL DEFAULT '{}';
    UPDATE submissions SET stages = jsonb_build_object('validated', created_at);
    """,
    # Blob keys of a track's renditions, so deleting it needs no listing of the store.
    """
    ALTER TABLE submissions ADD COLUMN rendition_keys text[] NOT NULL DEFAULT '{}';
    """,
    # The fingerprint algorithm version each submission was last fingerprinted with
    # (0: unknown), so `earmark reindex` finds the tracks an algorithm change left
    # behind; and whether a re-fingerprint was asked for and has not come back yet.
    # Rows from before: taken from the catalog when it shares the database.
    """
    ALTER TABLE submissions ADD COLUMN algorithm_version integer NOT NULL DEFAULT 0;
    ALTER TABLE submissions ADD COLUMN reindex_pending boolean NOT NULL DEFAULT false;
    DO $$
    BEGIN
        IF to_regclass('catalog.tracks') IS NOT NULL THEN
            UPDATE submissions s SET algorithm_version = t.algorithm_version
            FROM catalog.tracks t WHERE t.track_id = s.submission_id;
        END IF;
    END
    $$;
    """,
)
