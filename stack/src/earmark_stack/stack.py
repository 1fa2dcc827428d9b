"""`earmark up` / `earmark down`: the whole system as background processes on one machine.

Ports are chosen free at start and recorded in $EARMARK_HOME/stack.json, which
every other `earmark` command (and the SDK) reads to find the services.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from earmark._auth import credentials

from .processes import (
    StackError,
    ensure_database,
    free_port,
    nats_server_binary,
    pid_alive,
    spawn,
    start_postgres,
    stop_pid,
    stop_pids,
    stop_postgres,
    wait_for_port,
)

SERVICES = ("fingerprint", "search", "ingest", "features", "transcoder", "monitor")
# What ingesting to INDEXED and identifying need. Without features, transcoder and
# monitor, submissions still reach INDEXED (search reports it); they only lack
# the optional "analysed" and "transcoded" stages. For benchmarks of identify.
IDENTIFY_SERVICES = ("fingerprint", "search", "ingest")
# Python module each process runs.
MODULES = {name: f"earmark_{name}" for name in SERVICES} | {
    "transcoder": "earmark_ingest.transcoder"
}
INFO_FILE = "stack.json"

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


@dataclass
class StackInfo:
    home: str
    nats_url: str
    nats_pid: int
    database_url: str
    pgdata: str
    blob_url: str
    services: dict[str, dict[str, int | str]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def addr(self, service: str) -> str:
        return str(self.services[service]["addr"])


def read_info(home: Path) -> StackInfo | None:
    path = home / INFO_FILE
    if not path.exists():
        return None
    return StackInfo(**json.loads(path.read_text()))


def _write_info(home: Path, info: StackInfo) -> None:
    tmp = home / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(home / INFO_FILE)


def _nats_config(home: Path, port: int, monitor_port: int) -> Path:
    store = home / "nats"
    store.mkdir(parents=True, exist_ok=True)
    conf = home / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"http: 127.0.0.1:{monitor_port}\n"
        # Fingerprints of long tracks travel inline in events.
        "max_payload: 8MB\n"
        f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n}}\n'
    )
    return conf


def wait_serving(
    addr: str, timeout_s: float, what: str, pid: int, env: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    creds = credentials(env or {})
    channel = grpc.secure_channel(addr, creds) if creds else grpc.insecure_channel(addr)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise StackError(f"{what} exited during start-up")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.2)
    raise StackError(f"{what} not SERVING after {timeout_s:.0f} s (last: {last})")


def _chosen_services(services: Sequence[str]) -> tuple[str, ...]:
    """`services` in start order (SERVICES'), or ValueError for an unknown or empty choice."""
    unknown = sorted(set(services) - set(SERVICES))
    if unknown or not services:
        raise ValueError(
            f"services must be a non-empty subset of {', '.join(SERVICES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return tuple(name for name in SERVICES if name in services)


def up(
    home: Path,
    *,
    extra_env: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    timeout_s: float = 90.0,
    services: Sequence[str] = SERVICES,
) -> StackInfo:
    """Start nats-server, PostgreSQL and `services` (all by default); return once
    all are SERVING. A stack already running under `home` is kept when it runs at
    least `services`, else stopped and started afresh."""
    names = _chosen_services(services)
    home.mkdir(parents=True, exist_ok=True)
    existing = read_info(home)
    if existing is not None and pid_alive(existing.nats_pid):
        alive = all(pid_alive(int(s["pid"])) for s in existing.services.values())
        if alive and set(names) <= set(existing.services):
            progress(f"stack already running under {home}")
            return existing
        down(home)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)

    nats_port, monitor_port, pg_port = free_port(), free_port(), free_port()
    progress(f"starting nats-server on 127.0.0.1:{nats_port}")
    conf = _nats_config(home, nats_port, monitor_port)
    nats_pid = spawn([nats_server_binary(), "-c", str(conf)], logs / "nats.log")
    wait_for_port(nats_port, 20, "nats-server", nats_pid)

    pgdata = home / "pgdata"
    info = StackInfo(
        home=str(home),
        nats_url=f"nats://127.0.0.1:{nats_port}",
        nats_pid=nats_pid,
        database_url=f"postgresql://earmark@127.0.0.1:{pg_port}/earmark",
        pgdata=str(pgdata),
        blob_url=(extra_env or {}).get("EARMARK_BLOB_URL", "nats://earmark-blobs"),
        extra_env=dict(extra_env or {}),
    )
    # Recorded before anything else starts, so `down` can clean up a failed start.
    _write_info(home, info)
    try:
        progress(f"starting PostgreSQL on 127.0.0.1:{pg_port}")
        start_postgres(pgdata, pg_port, logs / "postgres.log")
        ensure_database(pg_port, "earmark")
        _start_services(home, info, names, progress, timeout_s)
    except BaseException:
        down(home)
        raise
    return info


def _service_env(home: Path, info: StackInfo, name: str) -> dict[str, str]:
    # The services others dial, where this stack runs them.
    dialled = {
        f"EARMARK_{peer.upper()}_ADDR": info.addr(peer)
        for peer in ("fingerprint", "search")
        if peer in info.services
    }
    return {
        **os.environ,
        "EARMARK_HOME": str(home),
        "EARMARK_GRPC_HOST": "127.0.0.1",
        "EARMARK_GRPC_PORT": str(info.services[name]["addr"]).rsplit(":", 1)[1],
        "EARMARK_NATS_URL": info.nats_url,
        "EARMARK_DATABASE_URL": info.database_url,
        "EARMARK_BLOB_URL": info.blob_url,
        **dialled,
        "PYTHONUNBUFFERED": "1",
        **info.extra_env,
    }


def _spawn_service(home: Path, info: StackInfo, name: str) -> int:
    env = _service_env(home, info, name)
    pid = spawn([sys.executable, "-m", MODULES[name]], home / "logs" / f"{name}.log", env)
    info.services[name]["pid"] = pid
    return pid


def _start_services(
    home: Path,
    info: StackInfo,
    names: Sequence[str],
    progress: Callable[[str], None],
    timeout_s: float,
) -> None:
    for name in names:
        info.services[name] = {"addr": f"127.0.0.1:{free_port()}", "pid": 0}
    for name in names:
        pid = _spawn_service(home, info, name)
        progress(f"started {name} (pid {pid}) on {info.addr(name)}")
    _write_info(home, info)
    try:
        for name in names:
            wait_serving(
                info.addr(name), timeout_s, name, int(info.services[name]["pid"]), info.extra_env
            )
            progress(f"{name} is SERVING")
    except StackError as exc:
        raise StackError(f"{exc}{_log_tails(home)}") from exc


def _log_tails(home: Path) -> str:
    tails = ""
    for name in SERVICES:
        path = home / "logs" / f"{name}.log"
        if path.exists():
            tails += f"\n--- {name}.log ---\n" + path.read_text(errors="replace")[-1500:]
    return tails


def restart_service(home: Path, name: str, *, timeout_s: float = 60.0) -> StackInfo:
    """Start `name` again on its old port (after a crash, or to roll it)."""
    info = read_info(home)
    if info is None:
        raise StackError(f"no stack under {home}")
    stop_pid(int(info.services[name]["pid"]))
    pid = _spawn_service(home, info, name)
    _write_info(home, info)
    try:
        wait_serving(info.addr(name), timeout_s, name, pid, info.extra_env)
    except StackError as exc:
        raise StackError(f"{exc}{_log_tails(home)}") from exc
    return info


def restart_nats(home: Path) -> StackInfo:
    """Stop nats-server and start it again on the same port and store."""
    info = read_info(home)
    if info is None:
        raise StackError(f"no stack under {home}")
    stop_pid(info.nats_pid)
    port = int(info.nats_url.rsplit(":", 1)[1])
    info.nats_pid = spawn(
        [nats_server_binary(), "-c", str(home / "nats.conf")], home / "logs" / "nats.log"
    )
    wait_for_port(port, 20, "nats-server", info.nats_pid)
    _write_info(home, info)
    return info


def restart_postgres(home: Path) -> None:
    info = read_info(home)
    if info is None:
        raise StackError(f"no stack under {home}")
    port = int(info.database_url.rsplit(":", 1)[1].split("/")[0])
    stop_postgres(Path(info.pgdata))
    start_postgres(Path(info.pgdata), port, home / "logs" / "postgres.log")


def down(home: Path, progress: Callable[[str], None] = lambda _msg: None) -> bool:
    """Stop everything `up` started under `home`. Returns False if nothing was running."""
    info = read_info(home)
    if info is None:
        return False
    stop_pids([int(entry["pid"]) for entry in info.services.values()])
    progress(f"stopped {', '.join(info.services)}")
    stop_postgres(Path(info.pgdata))
    progress("stopped PostgreSQL")
    stop_pid(info.nats_pid)
    progress("stopped nats-server")
    (home / INFO_FILE).unlink(missing_ok=True)
    return True
