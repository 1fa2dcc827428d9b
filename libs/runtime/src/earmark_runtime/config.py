"""Service configuration, read once from environment variables.

Every variable is listed in `SETTINGS_TABLE` so that the README's table and
`earmark config` are generated from the same source as the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class SettingDoc:
    name: str
    default: str
    meaning: str


SETTINGS_TABLE: Final[tuple[SettingDoc, ...]] = (
    SettingDoc("EARMARK_HOME", "~/.earmark", "State of the embedded stack: data, logs, ports."),
    SettingDoc("EARMARK_GRPC_HOST", "0.0.0.0", "Address the service's gRPC server binds."),  # noqa: S104
    SettingDoc(
        "EARMARK_GRPC_PORT", "per service: 50051-50056", "Port of the service's gRPC server."
    ),
    SettingDoc("EARMARK_NATS_URL", "nats://127.0.0.1:4222", "NATS server with JetStream."),
    SettingDoc(
        "EARMARK_DATABASE_URL",
        "postgresql://earmark@127.0.0.1:5432/earmark",
        "PostgreSQL for submissions (ingest) and the catalog (search).",
    ),
    SettingDoc(
        "EARMARK_BLOB_URL",
        "nats://earmark-blobs",
        "Blob store: nats://BUCKET (JetStream object store) or file:///DIR.",
    ),
    SettingDoc("EARMARK_FINGERPRINT_ADDR", "127.0.0.1:50052", "Where search reaches fingerprint."),
    SettingDoc("EARMARK_SEARCH_ADDR", "127.0.0.1:50053", "Where monitor reaches search."),
    SettingDoc("EARMARK_MAX_UPLOAD_BYTES", "268435456", "Largest accepted upload (256 MiB)."),
    SettingDoc("EARMARK_MAX_DURATION_S", "7200", "Longest accepted track, seconds."),
    SettingDoc("EARMARK_MIN_DURATION_S", "3", "Shortest accepted track, seconds."),
    SettingDoc("EARMARK_MAX_CLIP_S", "60", "Longest clip identify takes, seconds."),
    SettingDoc(
        "EARMARK_MAX_MONITOR_S",
        "86400",
        "Longest one Monitor call may run, seconds of audio; the client then reconnects.",
    ),
    SettingDoc(
        "EARMARK_MONITOR_STREAMS",
        "8",
        "Registered streams one monitor replica watches at once.",
    ),
    SettingDoc(
        "EARMARK_MAX_INFLIGHT",
        "16",
        "Calls a server works on at once; more are refused with RESOURCE_EXHAUSTED "
        "(live Monitor streams and health checks are not counted).",
    ),
    SettingDoc(
        "EARMARK_FFMPEG_MEMORY_MB",
        "1024",
        "Address-space limit of each ffmpeg child, MiB; 0 for none.",
    ),
    SettingDoc(
        "EARMARK_COMPACT_ROWS",
        "500000",
        "search: new postings (one row each) that trigger packing them into the per-hash "
        "index at once (also when they reach a quarter of the catalog's postings).",
    ),
    SettingDoc(
        "EARMARK_COMPACT_IDLE_S",
        "10",
        "search: seconds without index writes after which a smaller backlog is packed too "
        "and the neural index is sealed.",
    ),
    SettingDoc(
        "EARMARK_API_KEYS_FILE",
        "(empty: no authentication)",
        "JSON list of {name, role, sha256} of accepted API keys; roles identify, ingest, admin.",
    ),
    SettingDoc(
        "EARMARK_API_KEY",
        "",
        "The key a service (or the CLI/SDK) sends on its own calls when authentication is on.",
    ),
    SettingDoc(
        "EARMARK_TLS_CERT", "(empty: plaintext)", "PEM certificate this process serves with."
    ),
    SettingDoc("EARMARK_TLS_KEY", "", "PEM private key of EARMARK_TLS_CERT."),
    SettingDoc(
        "EARMARK_TLS_CA",
        "",
        "PEM CA of peers: servers then require client certificates (mTLS), clients verify.",
    ),
    SettingDoc(
        "EARMARK_INGEST_ROOT",
        "(empty: off)",
        "Folder ingest reads files from for earmark.ingest.requested events; empty turns it off.",
    ),
    SettingDoc(
        "EARMARK_REQUIRED_TAGS",
        "title,artist",
        "Tags an upload must carry (in the file or the request), comma-separated; empty for none.",
    ),
    SettingDoc(
        "EARMARK_MUSIC_CHECK",
        "on",
        "on: refuse noise, tones, sweeps, clicks and speech-only uploads as NOT_MUSIC; off.",
    ),
    SettingDoc(
        "EARMARK_MAX_CLIPPING",
        "0.2",
        "Largest share of samples at full scale before an upload is refused as CLIPPED.",
    ),
    SettingDoc(
        "EARMARK_DUPLICATES",
        "reject",
        "A submission that is the same recording as a catalog track: reject, replace or allow.",
    ),
    SettingDoc(
        "EARMARK_RENDITIONS",
        "mp3-320:mp3:320,mp3-128:mp3:128,aac-256:m4a:256,opus-96:opus:96",
        "Delivery copies made of every indexed track: name:format:kbps, comma-separated.",
    ),
    SettingDoc(
        "EARMARK_MILVUS_URI",
        "$EARMARK_HOME/features/milvus.db",
        "Similarity index of features: a Milvus server http://HOST:19530, or a Milvus Lite "
        "file *.db (one replica only).",
    ),
    SettingDoc(
        "EARMARK_VECTORS_URI",
        "$EARMARK_HOME/search/vectors.db",
        "Neural fingerprint index of search: a Milvus server http://HOST:19530, or a Milvus "
        "Lite file *.db (one replica only); empty turns neural identification off.",
    ),
    SettingDoc(
        "EARMARK_MILVUS_TOKEN",
        "",
        "Milvus credentials (user:password or API key) when the server needs them.",
    ),
    SettingDoc("EARMARK_WORKERS", "2", "Messages a consumer works on at once."),
    SettingDoc(
        "EARMARK_STREAM_REPLICAS",
        "1",
        "Replicas of the JetStream stream and blob bucket (3 on a 3-node NATS cluster).",
    ),
    SettingDoc("EARMARK_FFMPEG", "ffmpeg from imageio-ffmpeg", "ffmpeg binary used to decode."),
    SettingDoc("EARMARK_LOG_LEVEL", "INFO", "Python log level."),
    SettingDoc("EARMARK_LOG_FORMAT", "text", "text, or json for one JSON object per line."),
    SettingDoc(
        "EARMARK_OTEL_EXPORTER",
        "none",
        "Trace exporter: none, console, or otlp (needs opentelemetry-exporter-otlp).",
    ),
    SettingDoc("OTEL_SERVICE_NAME", "earmark-<service>", "Service name on spans."),
)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def earmark_home() -> Path:
    return Path(_env("EARMARK_HOME", "~/.earmark")).expanduser()


@dataclass(frozen=True)
class Settings:
    service: str
    grpc_host: str
    grpc_port: int
    nats_url: str
    database_url: str
    blob_url: str
    fingerprint_addr: str
    search_addr: str
    max_upload_bytes: int
    max_duration_s: float
    min_duration_s: float
    max_clip_s: float
    max_monitor_s: float
    monitor_streams: int
    max_inflight: int
    compact_rows: int
    compact_idle_s: float
    ffmpeg_memory_mb: int
    workers: int
    stream_replicas: int
    duplicates: str
    renditions: str
    required_tags: tuple[str, ...]
    ingest_root: str
    api_keys_file: str
    api_key: str
    tls_cert: str
    tls_key: str
    tls_ca: str
    music_check: bool
    max_clipping: float
    ffmpeg: str
    log_level: str
    log_format: str
    otel_exporter: str
    vectors_uri: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_bind(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


DEFAULT_PORTS: Final[dict[str, int]] = {
    "ingest": 50051,
    "fingerprint": 50052,
    "search": 50053,
    "features": 50054,
    "transcoder": 50055,
    "monitor": 50056,
}


def load_settings(service: str) -> Settings:
    """Read the settings of `service` from the environment, failing on bad values."""
    log_format = _env("EARMARK_LOG_FORMAT", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"EARMARK_LOG_FORMAT must be text or json, got {log_format!r}")
    exporter = _env("EARMARK_OTEL_EXPORTER", "none")
    if exporter not in ("none", "console", "otlp", "memory"):
        raise ConfigError(f"EARMARK_OTEL_EXPORTER must be none, console or otlp, got {exporter!r}")
    music_check = _env("EARMARK_MUSIC_CHECK", "on")
    if music_check not in ("on", "off"):
        raise ConfigError(f"EARMARK_MUSIC_CHECK must be on or off, got {music_check!r}")
    required_raw = os.environ.get("EARMARK_REQUIRED_TAGS")
    required_tags = tuple(
        t.strip()
        for t in ("title,artist" if required_raw is None else required_raw).split(",")
        if t.strip()
    )
    duplicates = _env("EARMARK_DUPLICATES", "reject")
    if duplicates not in ("reject", "replace", "allow"):
        raise ConfigError(
            f"EARMARK_DUPLICATES must be reject, replace or allow, got {duplicates!r}"
        )
    blob_url = _env("EARMARK_BLOB_URL", "nats://earmark-blobs")
    if not blob_url.startswith(("nats://", "file://")):
        raise ConfigError(f"EARMARK_BLOB_URL must start with nats:// or file://, got {blob_url!r}")
    return Settings(
        service=service,
        # Containers must listen on every interface; the embedded stack binds loopback.
        grpc_host=_env("EARMARK_GRPC_HOST", "0.0.0.0"),  # noqa: S104
        grpc_port=_env_int("EARMARK_GRPC_PORT", DEFAULT_PORTS.get(service, 50050)),
        nats_url=_env("EARMARK_NATS_URL", "nats://127.0.0.1:4222"),
        database_url=_env("EARMARK_DATABASE_URL", "postgresql://earmark@127.0.0.1:5432/earmark"),
        blob_url=blob_url,
        fingerprint_addr=_env("EARMARK_FINGERPRINT_ADDR", "127.0.0.1:50052"),
        search_addr=_env("EARMARK_SEARCH_ADDR", "127.0.0.1:50053"),
        max_upload_bytes=_env_int("EARMARK_MAX_UPLOAD_BYTES", 256 * 1024 * 1024, minimum=1),
        max_duration_s=_env_float("EARMARK_MAX_DURATION_S", 7200.0, minimum=1.0),
        min_duration_s=_env_float("EARMARK_MIN_DURATION_S", 3.0),
        max_clip_s=_env_float("EARMARK_MAX_CLIP_S", 60.0, minimum=1.0),
        max_monitor_s=_env_float("EARMARK_MAX_MONITOR_S", 86400.0, minimum=1.0),
        monitor_streams=_env_int("EARMARK_MONITOR_STREAMS", 8, minimum=1),
        max_inflight=_env_int("EARMARK_MAX_INFLIGHT", 16, minimum=1),
        compact_rows=_env_int("EARMARK_COMPACT_ROWS", 500_000, minimum=1),
        compact_idle_s=_env_float("EARMARK_COMPACT_IDLE_S", 10.0),
        ffmpeg_memory_mb=_env_int("EARMARK_FFMPEG_MEMORY_MB", 1024),
        workers=_env_int("EARMARK_WORKERS", 2, minimum=1),
        stream_replicas=_env_int("EARMARK_STREAM_REPLICAS", 1, minimum=1),
        duplicates=duplicates,
        required_tags=required_tags,
        ingest_root=_env("EARMARK_INGEST_ROOT", ""),
        api_keys_file=_env("EARMARK_API_KEYS_FILE", ""),
        api_key=_env("EARMARK_API_KEY", ""),
        tls_cert=_env("EARMARK_TLS_CERT", ""),
        tls_key=_env("EARMARK_TLS_KEY", ""),
        tls_ca=_env("EARMARK_TLS_CA", ""),
        music_check=music_check == "on",
        max_clipping=_env_float("EARMARK_MAX_CLIPPING", 0.2),
        renditions=_env(
            "EARMARK_RENDITIONS", "mp3-320:mp3:320,mp3-128:mp3:128,aac-256:m4a:256,opus-96:opus:96"
        ),
        ffmpeg=_env("EARMARK_FFMPEG", ""),
        log_level=_env("EARMARK_LOG_LEVEL", "INFO").upper(),
        log_format=log_format,
        otel_exporter=exporter,
        vectors_uri=os.environ.get(
            "EARMARK_VECTORS_URI", str(earmark_home() / "search" / "vectors.db")
        ).strip(),
    )
