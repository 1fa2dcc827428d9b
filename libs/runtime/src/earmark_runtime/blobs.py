"""Blob store for source audio.

Two back ends behind one interface. The default is a JetStream object store:
every service already talks to NATS, so no shared volume is needed between
pods, and NATS replicates it when run as a cluster. A directory store suits
one machine, or a ReadWriteMany volume, and is trivially inspectable.

Keys are content addresses ("sources/<sha256>") so a retried upload writes the
same key again instead of leaving a second copy behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.errors import NotFoundError, ObjectNotFoundError


class BlobNotFoundError(KeyError):
    pass


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, key: str) -> None: ...
    async def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid blob key {key!r}")


class DirectoryBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self._root / key

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, key, data)

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file, a crash leaves only a temp file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(key) from exc

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class NatsObjectBlobStore:
    def __init__(self, js: JetStreamContext, bucket: str, replicas: int = 1) -> None:
        self._js = js
        self._bucket = bucket
        self._replicas = replicas
        self._store: object | None = None

    async def _obj(self):  # type: ignore[no-untyped-def]
        if self._store is None:
            try:
                self._store = await self._js.object_store(self._bucket)
            except (NotFoundError, Exception):
                self._store = await self._js.create_object_store(
                    self._bucket, config=ObjectStoreConfig(replicas=self._replicas)
                )
        return self._store

    async def put(self, key: str, data: bytes) -> None:
        _check_key(key)
        store = await self._obj()
        await store.put(key, data)

    async def get(self, key: str) -> bytes:
        _check_key(key)
        store = await self._obj()
        try:
            result = await store.get(key)
        except (ObjectNotFoundError, NotFoundError) as exc:
            raise BlobNotFoundError(key) from exc
        data: bytes = result.data or b""
        return data

    async def delete(self, key: str) -> None:
        _check_key(key)
        store = await self._obj()
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            await store.delete(key)

    async def exists(self, key: str) -> bool:
        store = await self._obj()
        try:
            info = await store.get_info(key)
        except (ObjectNotFoundError, NotFoundError):
            return False
        return not getattr(info, "deleted", False)


def open_blob_store(url: str, js: JetStreamContext | None, replicas: int = 1) -> BlobStore:
    if url.startswith("file://"):
        return DirectoryBlobStore(Path(url.removeprefix("file://")).expanduser())
    if url.startswith("nats://"):
        if js is None:
            raise ValueError("a nats:// blob store needs a JetStream connection")
        bucket = url.removeprefix("nats://").strip("/") or "earmark-blobs"
        return NatsObjectBlobStore(js, bucket, replicas)
    raise ValueError(f"unsupported blob store URL {url!r}")
