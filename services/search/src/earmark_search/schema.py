"""Catalog schema, applied in order by earmark_runtime.db.migrate.

Landmarks are stored twice, as acoustid-server does with its fingerprints:
- `fingerprints`: one row per track with its distinct hashes, sorted, as an
  integer array (TOASTed): where the track's postings are, used to delete or
  re-index a track without scanning the index (its times are not kept: the
  postings hold them, and a re-index fingerprints the kept source again), and
  its spectral peaks (`peaks`, ~0.4 MB per hour) to verify a weak vote;
- the inverted index, in two parts (a log-structured merge, see
  docs/landmarks.md "Store"):
  - `packed_postings`: one row per hash, its postings packed in a `bytea` of
    8-byte big-endian entries `(track_key << 32) | t` (what `int8send()`
    writes) and their number `n`. A lookup reads one row per query hash
    instead of one heap tuple per posting, and a posting costs 8 bytes
    instead of ~40. Until migration 6 the entries were a `bigint[]`, whose
    array header cost 20 bytes a row on top of the varlena header (a
    `bytea` has only the latter: 1 byte up to 126 bytes of entries, 4 above),
    in a table of mostly short rows (~3.8 postings a hash).
    The primary key includes `n`, so a lookup can rank a clip's hashes by
    rarity from the index alone and fetch the rarest within a postings budget;
  - `recent_postings`: one narrow row per (hash, track, time) with a B-tree on
    hash, where new tracks land by binary COPY (cheap appends). The search
    service's compactor moves them into `packed_postings` in hash-range slices.
  - the view `postings` is their union, row per posting (for operators/tests).
  Lookups read both parts in one statement, so one snapshot: a posting being
  moved is seen exactly once.
Hashes are unsigned 32-bit values stored in signed `integer` columns
(bit-for-bit), never as byte strings.

Since migration 7 a packed row may hold the postings of 2**bits neighbouring
hashes (`hash >> bits` is its key), with each entry's low byte above the time
holding the hash's low bits: `(track_key << 32) | (low << 24) | t`. A small
catalog has few postings per hash, so one row per hash spent more on row
headers and B-tree entries than on postings (~69 bytes a row for ~4 postings
of 8 bytes at 4 h of audio); the bits shrink as the catalog grows, down to one
hash per row (catalog.bucket_bits_for). The current `bits` is the `n` of the
marker row `hash = -1` of the same table (none: 0, as after a TRUNCATE), so a
statement that reads rows reads the layout they were written in.
"""

SCHEMA = "catalog"

# Every posting of both parts, with its whole hash: the packed rows' keys and
# entries decoded with the layout of their own table.
POSTINGS_VIEW = f"""
    CREATE VIEW {SCHEMA}.postings AS
        SELECT hash, track_key, t FROM {SCHEMA}.recent_postings
        UNION ALL
        SELECT ((p.hash::bigint << layout.bits) | ((e >> 24) & 255))::integer,
            (e >> 32)::integer, (e & 16777215)::integer
        FROM {SCHEMA}.packed_postings p,
            (SELECT coalesce((SELECT n FROM {SCHEMA}.packed_postings WHERE hash = -1), 0) AS bits)
                AS layout,
            generate_series(0, length(p.entries) - 8, 8) AS o,
            LATERAL (SELECT ('x' || encode(substring(p.entries, o + 1, 8), 'hex'))::bit(64)::bigint)
                AS d(e)
        WHERE p.hash >= 0;
"""  # noqa: S608 - SCHEMA is a module constant

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tracks (
        track_key         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        track_id          uuid NOT NULL UNIQUE,
        external_id       text NOT NULL,
        title             text NOT NULL DEFAULT '',
        artist            text NOT NULL DEFAULT '',
        album             text NOT NULL DEFAULT '',
        isrc              text NOT NULL DEFAULT '',
        extra             jsonb NOT NULL DEFAULT '{}',
        duration_s        double precision NOT NULL,
        source_sha256     text NOT NULL,
        source_format     text NOT NULL DEFAULT '',
        blob_key          text NOT NULL,
        landmark_count    integer NOT NULL,
        algorithm_version integer NOT NULL,
        frame_rate_hz     double precision NOT NULL,
        indexed_at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX tracks_external_id_idx ON tracks (external_id);
    CREATE TABLE fingerprints (
        track_key integer PRIMARY KEY REFERENCES tracks (track_key) ON DELETE CASCADE,
        hashes    integer[] NOT NULL,
        times     integer[] NOT NULL
    );
    CREATE TABLE landmarks (
        hash      integer NOT NULL,
        track_key integer NOT NULL,
        t         integer NOT NULL
    ) WITH (fillfactor = 100, autovacuum_vacuum_insert_scale_factor = 0.5);
    CREATE INDEX landmarks_hash_idx ON landmarks (hash) WITH (fillfactor = 95);
    """,
    """
    CREATE TABLE renditions (
        track_key    integer NOT NULL REFERENCES tracks (track_key) ON DELETE CASCADE,
        name         text NOT NULL,
        format       text NOT NULL,
        bitrate_kbps integer NOT NULL,
        size_bytes   bigint NOT NULL,
        duration_s   double precision NOT NULL,
        PRIMARY KEY (track_key, name)
    );
    """,
    """
    ALTER TABLE landmarks RENAME TO recent_postings;
    ALTER INDEX landmarks_hash_idx RENAME TO recent_postings_hash_idx;
    CREATE TABLE packed_postings (
        hash    integer NOT NULL,
        n       integer NOT NULL,
        entries bigint[] NOT NULL,
        PRIMARY KEY (hash) INCLUDE (n)
    ) WITH (fillfactor = 100);
    CREATE VIEW postings AS
        SELECT hash, track_key, t FROM recent_postings
        UNION ALL
        SELECT p.hash, (e >> 32)::integer, (e & 4294967295)::integer
        FROM packed_postings p, unnest(p.entries) AS e;
    """,
    """
    ALTER TABLE fingerprints DROP COLUMN times;
    UPDATE fingerprints SET hashes = ARRAY(SELECT DISTINCT h FROM unnest(hashes) AS h ORDER BY h);
    """,
    # The track's spectral peaks, for verifying a weak vote (verification.py):
    # sorted uint32 keys, little-endian. Empty for tracks indexed before.
    """
    ALTER TABLE fingerprints ADD COLUMN peaks bytea NOT NULL DEFAULT '';
    """,
    # packed_postings.entries: bigint[] -> bytea of 8-byte big-endian entries,
    # same values in the same order: a rewrite of the table and its primary key
    # under an exclusive lock (lookups wait; 3.7 s for 691,521 rows), after
    # which search processes of the previous version fail their lookups (they
    # read the column as an array) until replaced. ALTER COLUMN ... USING
    # allows no subquery, so the conversion is a function, dropped again; the
    # view depends on the column and is recreated, decoding entry by entry.
    """
    DROP VIEW postings;
    CREATE FUNCTION entries_to_bytea(entries bigint[]) RETURNS bytea
        LANGUAGE sql IMMUTABLE STRICT
        AS $$
            SELECT coalesce(string_agg(int8send(e), ''::bytea ORDER BY i), ''::bytea)
            FROM unnest(entries) WITH ORDINALITY AS u(e, i)
        $$;
    ALTER TABLE packed_postings ALTER COLUMN entries TYPE bytea USING entries_to_bytea(entries);
    DROP FUNCTION entries_to_bytea(bigint[]);
    CREATE VIEW postings AS
        SELECT hash, track_key, t FROM recent_postings
        UNION ALL
        SELECT p.hash, (e >> 32)::integer, (e & 4294967295)::integer
        FROM packed_postings p, generate_series(0, length(p.entries) - 8, 8) AS o,
            LATERAL (SELECT ('x' || encode(substring(p.entries, o + 1, 8), 'hex'))::bit(64)::bigint)
                AS d(e);
    """,
    # The layout marker (see above): existing rows are one hash each (bits 0,
    # and their entries' times are below 2**24 frames, so their low byte is 0);
    # the next compaction re-buckets a small catalog (Catalog.compact). Hashes
    # with the sign bit (no extractor makes them) or tracks over 2**24 frames
    # (149 h) would not fit the new layout: the migration stops instead.
    f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM packed_postings WHERE hash < 0)
            OR EXISTS (SELECT 1 FROM recent_postings WHERE hash < 0 OR t > 16777215)
            OR EXISTS (SELECT 1 FROM tracks WHERE duration_s * frame_rate_hz > 16777215) THEN
            RAISE EXCEPTION 'catalog holds hashes of 32 bits or tracks over 2^24 frames';
        END IF;
    END $$;
    INSERT INTO packed_postings (hash, n, entries) VALUES (-1, 0, ''::bytea);
    DROP VIEW postings;
    {POSTINGS_VIEW}
    """,  # noqa: S608
)
