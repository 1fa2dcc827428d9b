"""Identifier checks every service applies to request fields."""

from __future__ import annotations

import uuid

import grpc


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def require_uuid(context: grpc.aio.ServicerContext, field: str, value: str) -> None:
    """Abort the call with INVALID_ARGUMENT unless `value` is a UUID."""
    if not is_uuid(value):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} {value!r} is not a UUID")
