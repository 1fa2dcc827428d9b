"""The embedded Earmark stack: everything on one machine, state under $EARMARK_HOME."""

from .stack import (
    StackError,
    StackInfo,
    down,
    read_info,
    restart_nats,
    restart_postgres,
    restart_service,
    up,
)

__all__ = [
    "StackError",
    "StackInfo",
    "down",
    "read_info",
    "restart_nats",
    "restart_postgres",
    "restart_service",
    "up",
]
