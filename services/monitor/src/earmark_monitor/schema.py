"""Monitor schema, applied in order by earmark_runtime.db.migrate.

- `streams`: the registered sources, and the lease of the replica watching
  each one. The lease fences a replica that lost the stream (its writes need
  it), and `message_seq` names the work message the holder keeps in progress,
  so a copy of that message is told apart from a stray duplicate.
- `plays`: the play log. `track_zero` is the wall-clock moment the track's
  own time 0 falls on for this play (started_at - track_offset_s): a replica
  taking over a stream mid-song sees the same track_zero and extends the play
  instead of logging it again.
"""

SCHEMA = "monitor"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE SEQUENCE stream_generations;
    CREATE TABLE streams (
        name            text PRIMARY KEY,
        url             text NOT NULL,
        generation      bigint NOT NULL DEFAULT nextval('stream_generations'),
        registered_at   timestamptz NOT NULL DEFAULT now(),
        holder          text,
        lease_until     timestamptz,
        message_seq     bigint,
        claims          bigint NOT NULL DEFAULT 0,
        heard_at        timestamptz,
        last_error      text NOT NULL DEFAULT '',
        source_ended_at timestamptz
    );
    CREATE TABLE plays (
        play_id        uuid PRIMARY KEY,
        stream_name    text NOT NULL,
        track_id       uuid NOT NULL,
        external_id    text NOT NULL DEFAULT '',
        title          text NOT NULL DEFAULT '',
        artist         text NOT NULL DEFAULT '',
        duration_s     double precision NOT NULL DEFAULT 0,
        started_at     timestamptz NOT NULL,
        ended_at       timestamptz NOT NULL,
        track_zero     timestamptz NOT NULL,
        track_offset_s double precision NOT NULL,
        confidence     double precision NOT NULL,
        playing        boolean NOT NULL DEFAULT true
    );
    CREATE INDEX plays_stream_started_idx ON plays (stream_name, started_at, play_id);
    CREATE INDEX plays_continuation_idx ON plays (stream_name, track_id, ended_at);
    """,
)
