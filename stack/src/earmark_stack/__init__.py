"""The embedded Earmark stack: everything on one machine, state under $EARMARK_HOME."""

from .stack import (
    IDENTIFY_SERVICES,
    SERVICES,
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
    "IDENTIFY_SERVICES",
    "SERVICES",
    "StackError",
    "StackInfo",
    "down",
    "read_info",
    "restart_nats",
    "restart_postgres",
    "restart_service",
    "up",
]
