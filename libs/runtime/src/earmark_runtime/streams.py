"""Client-streamed files: a header message, then chunks, within a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc


class StreamTooLargeError(ValueError):
    pass


async def collect_header_and_chunks(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    *,
    limit_bytes: int,
) -> tuple[Any, bytes]:
    """Read a `oneof part { header; chunk }` stream; abort on a malformed stream.

    Raises StreamTooLargeError as soon as the chunks pass `limit_bytes`, so an
    oversized upload is refused without being buffered whole.
    """
    header: Any = None
    body = bytearray()
    async for request in requests:
        part = request.WhichOneof("part")
        if header is None:
            if part != "header":
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header"
                )
            header = request.header
            continue
        if part != "chunk":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only one header is allowed")
        body += request.chunk
        if len(body) > limit_bytes:
            raise StreamTooLargeError(f"upload is larger than the {limit_bytes} byte limit")
    if header is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream had no header")
    return header, bytes(body)
