"""When a run fails, end its report with what the services logged.

Integration tests start real services whose logs live under pytest's base
temporary directory. A failure such as "no features for track …" says only that
something never happened; the warnings and errors of the service that should have
done it say why, and on CI the report is all there is to read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BASETEMP = pytest.StashKey[Path]()
PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) ")
# Logged by every healthy start; they would bury the lines that matter.
ROUTINE = (
    "EARMARK_API_KEYS_FILE is not set",
    "dependencies not ready",
    # Milvus Lite answers pymilvus's AllocTimestamp probe so on every connect.
    "Method not implemented!",
)
LINES_PER_LOG = 12
MAX_LOGS = 40


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    request.config.stash[BASETEMP] = tmp_path_factory.getbasetemp()


def problem_lines(log: Path, limit: int = LINES_PER_LOG) -> list[str]:
    """The last `limit` warnings and errors of a service log, routine ones left out."""
    lines = log.read_text(errors="replace").splitlines()
    found = [
        line[:400] for line in lines if PROBLEM.search(line) and not any(r in line for r in ROUTINE)
    ]
    return found[-limit:]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    base = config.stash.get(BASETEMP, None)
    if exitstatus == 0 or base is None:
        return
    logs = sorted(base.glob("**/logs/*.log"), key=lambda p: p.stat().st_mtime)[-MAX_LOGS:]
    shown = [(log, problem_lines(log)) for log in logs]
    shown = [(log, lines) for log, lines in shown if lines]
    if not shown:
        return
    terminalreporter.section("service warnings and errors (last lines of each log)")
    for log, lines in shown:
        terminalreporter.write_line(f"--- {log.relative_to(base)}")
        for line in lines:
            terminalreporter.write_line(line)
