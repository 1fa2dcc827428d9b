"""Tags of an uploaded file, and the rule for which ones a submission needs.

``read_tags(data)`` reads the tags of MP3 (ID3v2/ID3v1/APEv2), FLAC and Ogg
Vorbis/Opus/FLAC (Vorbis comments), M4A/AAC/ALAC (MP4 atoms), WAV (ID3 chunk
or RIFF ``LIST/INFO``), AIFF (ID3 chunk or ``NAME``/``AUTH``/``ANNO`` chunks),
WMA (ASF) and other formats mutagen knows, from bytes in memory. It never
raises: bytes it cannot read give empty tags.

``merge(tags, request)`` lets non-empty values of the upload request win over
the file's tags; ``missing_fields(metadata, required)`` names the required
fields that are still empty.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAIN_FIELDS = ("title", "artist", "album", "isrc")
DEFAULT_REQUIRED = ("title", "artist")
# Longest value kept; tags are untrusted and end up in the database.
MAX_VALUE_CHARS = 1000
MAX_EXTRA_KEYS = 64
MAX_KEY_CHARS = 64


@dataclass(frozen=True)
class TrackTags:
    title: str = ""
    artist: str = ""
    album: str = ""
    isrc: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, str]:
        """Main fields and extras in one flat dict (main fields win)."""
        out = dict(self.extra)
        for name in MAIN_FIELDS:
            out[name] = getattr(self, name)
        return out

    def is_empty(self) -> bool:
        return not (any(getattr(self, n) for n in MAIN_FIELDS) or self.extra)


# Canonical name of every tag key we know, lower-cased (ID3 frame ids, MP4
# atoms, Vorbis/APE/ASF names, RIFF INFO and AIFF chunk ids).
_KEY_MAP = {
    # title
    "tit2": "title",
    "©nam": "title",
    "title": "title",
    "inam": "title",
    "name": "title",
    "wm/title": "title",
    # artist
    "tpe1": "artist",
    "©art": "artist",
    "artist": "artist",
    "iart": "artist",
    "auth": "artist",
    "author": "artist",
    "performer": "artist",
    # album
    "talb": "album",
    "©alb": "album",
    "album": "album",
    "iprd": "album",
    "wm/albumtitle": "album",
    # isrc
    "tsrc": "isrc",
    "isrc": "isrc",
    "wm/isrc": "isrc",
    "isrc ": "isrc",
    # common extras
    "tpe2": "album_artist",
    "aart": "album_artist",
    "albumartist": "album_artist",
    "album artist": "album_artist",
    "album_artist": "album_artist",
    "wm/albumartist": "album_artist",
    "tdrc": "date",
    "tyer": "date",
    "©day": "date",
    "date": "date",
    "year": "date",
    "icrd": "date",
    "tcon": "genre",
    "©gen": "genre",
    "genre": "genre",
    "ignr": "genre",
    "wm/genre": "genre",
    "trck": "track_number",
    "trkn": "track_number",
    "tracknumber": "track_number",
    "track": "track_number",
    "iprt": "track_number",
    "itrk": "track_number",
    "wm/tracknumber": "track_number",
    "tpos": "disc_number",
    "disk": "disc_number",
    "discnumber": "disc_number",
    "tcom": "composer",
    "©wrt": "composer",
    "composer": "composer",
    "wm/composer": "composer",
    "tpub": "label",
    "label": "label",
    "organization": "label",
    "wm/publisher": "label",
    "tcop": "copyright",
    "cprt": "copyright",
    "copyright": "copyright",
    "icop": "copyright",
    "(c) ": "copyright",
    "comm": "comment",
    "©cmt": "comment",
    "comment": "comment",
    "description": "comment",
    "icmt": "comment",
    "anno": "comment",
    "tbpm": "bpm",
    "tmpo": "bpm",
    "bpm": "bpm",
    "tsse": "encoder",
    "©too": "encoder",
    "encoder": "encoder",
    "isft": "encoder",
    "encoded_by": "encoder",
    "tenc": "encoder",
}
# Binary or bulky tags that are never kept as text.
_SKIP = {"apic", "covr", "metadata_block_picture", "coverart", "priv", "geob", "wm/picture", "ufid"}


def _key(raw: str) -> str:
    k = raw.strip().lower()
    if k.startswith("txxx:"):
        k = k[5:]
    elif k.startswith("----:com.apple.itunes:"):
        k = k[22:]
    elif ":" in k and k[:4] in ("comm", "uslt", "apic", "priv", "geob", "ufid", "wxxx"):
        k = k[:4]
    return k


def _text(value: Any) -> str:
    """Best-effort text of a tag value (ID3 frame, list, MP4 tuple, ASF attribute, bytes)."""
    if value is None:
        return ""
    if hasattr(value, "text") and not isinstance(value, str | bytes):  # ID3 text frames
        return _text(list(value.text))
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) > MAX_VALUE_CHARS * 4:
            return ""
        for enc in ("utf-8", "latin-1"):
            try:
                return raw.decode(enc).strip("\x00").strip()
            except UnicodeDecodeError:
                continue
        return ""
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        # MP4 trkn/disk: (number, total)
        n, *rest = value
        return f"{n}/{rest[0]}" if rest and rest[0] else str(n)
    if isinstance(value, list | tuple):
        parts = [p for p in (_text(v) for v in value) if p]
        return "; ".join(dict.fromkeys(parts))
    if hasattr(value, "value") and not isinstance(value, str | int | float):  # ASF, APE
        return _text(value.value)
    return str(value).strip("\x00").strip()


def _clean(s: str) -> str:
    s = "".join(ch for ch in s if ch.isprintable() or ch in "\t")
    return s.strip()[:MAX_VALUE_CHARS]


def _clean_key(s: str) -> str:
    """A tag name: printable, no tabs, at most MAX_KEY_CHARS."""
    return "".join(ch for ch in s if ch.isprintable()).strip()[:MAX_KEY_CHARS].strip()


def _from_items(items: Iterable[tuple[Any, Any]]) -> TrackTags:
    main: dict[str, str] = {}
    extra: dict[str, str] = {}
    for raw_key, value in items:
        try:
            key = _key(str(raw_key))
            if key in _SKIP or key[:4] in _SKIP:
                continue
            text = _clean(_text(value))
        except Exception:  # one odd frame must not lose the others
            log.debug("skipping unreadable tag %r", raw_key)
            continue
        if not text:
            continue
        name = _KEY_MAP.get(key, key)
        if name in MAIN_FIELDS:
            main.setdefault(name, text)
        elif len(extra) < MAX_EXTRA_KEYS and _clean_key(name):
            extra.setdefault(_clean_key(name), text)
    if main.get("isrc"):
        main["isrc"] = main["isrc"].replace("-", "").replace(" ", "").upper()
    return TrackTags(extra=extra, **main)


def _riff_info(data: bytes) -> list[tuple[str, bytes]]:
    """Text chunks of a RIFF/WAVE LIST/INFO list."""
    out: list[tuple[str, bytes]] = []
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return out
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"LIST" and body[:4] == b"INFO":
            sub = 4
            while sub + 8 <= len(body):
                sid = body[sub : sub + 4]
                ssize = struct.unpack("<I", body[sub + 4 : sub + 8])[0]
                out.append((sid.decode("latin-1"), body[sub + 8 : sub + 8 + ssize]))
                sub += 8 + ssize + (ssize & 1)
        if size == 0xFFFFFFFF:  # RF64 placeholder: sizes live elsewhere
            break
        pos += 8 + size + (size & 1)
    return out


def _aiff_text(data: bytes) -> list[tuple[str, bytes]]:
    """NAME/AUTH/(c) /ANNO chunks of an AIFF or AIFF-C file."""
    out: list[tuple[str, bytes]] = []
    if len(data) < 12 or data[:4] != b"FORM" or data[8:12] not in (b"AIFF", b"AIFC"):
        return out
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        if cid in (b"NAME", b"AUTH", b"(c) ", b"ANNO"):
            out.append((cid.decode("latin-1"), data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def _mutagen_items(data: bytes) -> list[tuple[Any, Any]]:
    import mutagen

    try:
        f = mutagen.File(io.BytesIO(data))
    except Exception as exc:
        log.debug("mutagen could not read the tags: %s", exc)
        return []
    tags = getattr(f, "tags", None) if f is not None else None
    if tags is None:
        return []
    items: list[tuple[Any, Any]] = []
    try:
        if hasattr(tags, "getall") and hasattr(tags, "values"):  # ID3: key "TXXX:desc"
            items = [(k, v) for k, v in tags.items()]
        else:
            items = list(tags.items())
    except Exception as exc:
        log.debug("tag iteration failed: %s", exc)
    return items


def read_tags(data: bytes) -> TrackTags:
    """Tags of an audio file given as bytes; empty tags for anything unreadable."""
    if not data:
        return TrackTags()
    try:
        data = bytes(data)
        items = _mutagen_items(data)
        items += _riff_info(data) + _aiff_text(data)
        return _from_items(items)
    except Exception as exc:
        log.debug("reading tags failed: %s", exc)
        return TrackTags()


def _as_fields(metadata: Any) -> dict[str, str]:
    """Flat {field: value} of a TrackTags, a mapping, or a TrackMetadata-like message."""
    if metadata is None:
        return {}
    if isinstance(metadata, TrackTags):
        return metadata.as_dict()
    if isinstance(metadata, Mapping):
        out = {str(k): str(v) for k, v in metadata.items() if k != "extra" and v is not None}
        nested = metadata.get("extra")
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                out.setdefault(str(k), str(v))
        return out
    out = {}
    extra = getattr(metadata, "extra", None)
    if extra is not None:
        out.update({str(k): str(v) for k, v in dict(extra).items()})
    for name in MAIN_FIELDS:
        value = getattr(metadata, name, None)
        if value is not None:
            out[name] = str(value)
    return out


def merge(tags: TrackTags | Mapping[str, Any] | Any, request_metadata: Any) -> TrackTags:
    """The file's tags with every non-empty value of the request laid over them.

    The request is as untrusted as the file: its values are cleaned the same way
    (printable, at most MAX_VALUE_CHARS), keys are at most MAX_KEY_CHARS and never
    empty, and at most MAX_EXTRA_KEYS extras are kept, the request's first. Found by
    tests/fuzz/test_fuzz_intake.py: control characters, empty keys and megabytes of
    text went from an Upload header into the database and every event.
    """
    from_request: dict[str, str] = {}
    for key, value in _as_fields(request_metadata).items():
        name, text = _clean_key(key), _clean(value)
        if name and text:
            from_request[name] = text
    merged = {**_as_fields(tags), **from_request}
    main = {n: _clean(merged.pop(n, "")) for n in MAIN_FIELDS}
    extra: dict[str, str] = {}
    for key in [*from_request, *merged]:
        name, text = _clean_key(key), _clean(merged.get(key, ""))
        if name and text and name not in MAIN_FIELDS and len(extra) < MAX_EXTRA_KEYS:
            extra.setdefault(name, text)
    return TrackTags(extra=extra, **main)


def missing_fields(
    metadata: TrackTags | Mapping[str, Any] | Any, required: Iterable[str] = DEFAULT_REQUIRED
) -> list[str]:
    """Names of the required fields that are absent or blank, in `required` order."""
    fields = _as_fields(metadata)
    return [name for name in required if not fields.get(name, "").strip()]
