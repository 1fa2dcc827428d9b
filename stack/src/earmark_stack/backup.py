"""Backup and restore of a catalog: PostgreSQL (submissions, catalog, features)
with pg_dump's custom format, and every blob (sources, renditions) with a
manifest of SHA-256 digests. Similarity vectors are not copied: the features
service re-adds every described track to Milvus from PostgreSQL when it starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

from .processes import StackError, postgres_bin_dir

SCHEMAS = ("ingest", "catalog", "features")
BUCKET = "earmark-blobs"


def _blob_path(root: Path, key: str) -> Path:
    path = (root / "blobs" / key).resolve()
    if root.resolve() not in path.parents:
        raise StackError(f"blob key {key!r} escapes the backup folder")
    return path


async def _dump_blobs(nats_url: str, out: Path, progress: Callable[[str], None]) -> dict[str, str]:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store(BUCKET)
        infos = [i for i in await store.list() if not i.deleted]
        digests: dict[str, str] = {}
        for n, info in enumerate(infos, start=1):
            data = (await store.get(info.name)).data or b""
            path = _blob_path(out, info.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            digests[info.name] = hashlib.sha256(data).hexdigest()
            if n % 50 == 0:
                progress(f"blobs: {n}/{len(infos)}")
        return digests
    finally:
        await nc.close()


async def _load_blobs(nats_url: str, root: Path, digests: dict[str, str]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            store = await js.object_store(BUCKET)
        except Exception:
            store = await js.create_object_store(BUCKET)
        for key, digest in digests.items():
            data = _blob_path(root, key).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise StackError(f"backup blob {key} is corrupt (digest mismatch)")
            await store.put(key, data)
    finally:
        await nc.close()


def backup(
    database_url: str, nats_url: str, out: Path, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    progress("dumping PostgreSQL")
    args = [str(postgres_bin_dir() / "pg_dump"), "--format=custom", "-f", str(out / "db.dump")]
    args += [f"--schema={s}" for s in SCHEMAS] + [database_url]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"pg_dump failed: {result.stderr.strip()[-500:]}")
    progress("copying blobs")
    digests = asyncio.run(_dump_blobs(nats_url, out, progress))
    manifest: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "schemas": list(SCHEMAS),
        "blobs": digests,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def restore(
    database_url: str, nats_url: str, src: Path, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    manifest = json.loads((src / "manifest.json").read_text())
    progress("restoring PostgreSQL")
    result = subprocess.run(
        [str(postgres_bin_dir() / "pg_restore"), "--clean", "--if-exists", "--no-owner",
         "-d", database_url, str(src / "db.dump")],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"pg_restore failed: {result.stderr.strip()[-500:]}")
    progress(f"restoring {len(manifest['blobs'])} blobs")
    asyncio.run(_load_blobs(nats_url, src, manifest["blobs"]))
    return dict(manifest)
