"""`earmark_stack.up(services=...)`: which services a stack starts, checked without starting one."""

from __future__ import annotations

from pathlib import Path

import pytest

from earmark_stack import IDENTIFY_SERVICES, SERVICES, StackInfo, up
from earmark_stack.stack import _chosen_services, _service_env


def test_identify_services_leave_out_the_optional_workers() -> None:
    assert set(IDENTIFY_SERVICES) == {"ingest", "fingerprint", "search"}
    assert set(IDENTIFY_SERVICES) < set(SERVICES)


def test_services_start_in_the_stack_order_whatever_order_they_are_given() -> None:
    assert _chosen_services(["ingest", "search", "fingerprint"]) == (
        "fingerprint",
        "search",
        "ingest",
    )
    assert _chosen_services(SERVICES) == SERVICES


@pytest.mark.parametrize("services", [["fingerprint", "transcoding"], []])
def test_unknown_or_no_services_are_refused_before_anything_starts(
    tmp_path: Path, services: list[str]
) -> None:
    home = tmp_path / "home"
    with pytest.raises(ValueError, match="subset of"):
        up(home, services=services)
    assert not home.exists()


def test_services_are_told_only_the_addresses_of_services_that_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EARMARK_SEARCH_ADDR", raising=False)
    info = StackInfo(
        home="/h", nats_url="nats://n", nats_pid=1, database_url="postgresql://d",
        pgdata="/h/pgdata", blob_url="nats://b",
        services={"fingerprint": {"addr": "127.0.0.1:5001", "pid": 0},
                  "ingest": {"addr": "127.0.0.1:5002", "pid": 0}},
    )  # fmt: skip
    env = _service_env(Path("/h"), info, "ingest")
    assert env["EARMARK_FINGERPRINT_ADDR"] == "127.0.0.1:5001"
    assert env["EARMARK_GRPC_PORT"] == "5002"
    assert "EARMARK_SEARCH_ADDR" not in env  # no search in this stack
