"""Configuration from the environment, and its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from earmark_runtime.config import SETTINGS_TABLE, ConfigError, load_settings
from scripts.config_table import markdown

REPO = Path(__file__).resolve().parents[2]


def test_defaults_apply_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in SETTINGS_TABLE:
        monkeypatch.delenv(setting.name, raising=False)
    settings = load_settings("search")
    assert settings.grpc_port == 50053
    assert settings.blob_url == "nats://earmark-blobs"
    assert settings.max_upload_bytes == 256 * 1024 * 1024


@pytest.mark.parametrize(
    "name,value,fragment",
    [
        ("EARMARK_GRPC_PORT", "http", "must be an integer"),
        ("EARMARK_MAX_UPLOAD_BYTES", "0", "must be >= 1"),
        ("EARMARK_MAX_CLIP_S", "soon", "must be a number"),
        ("EARMARK_BLOB_URL", "s3://bucket", "must start with nats:// or file://"),
        ("EARMARK_LOG_FORMAT", "xml", "text or json"),
    ],
)
def test_bad_values_fail_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as err:
        load_settings("ingest")
    assert fragment in str(err.value)


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (REPO / "README.md").read_text()
    pattern = r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->"
    block = re.search(pattern, readme, re.S)
    assert block is not None, "README lost its configuration table markers"
    assert block.group(1).strip() == markdown().strip(), "run: python scripts/config_table.py"


def test_every_setting_read_by_the_code_is_documented() -> None:
    source = (REPO / "libs/runtime/src/earmark_runtime/config.py").read_text()
    read = set(re.findall(r'_env(?:_int|_float)?\("(EARMARK_[A-Z_]+)"', source))
    documented = {s.name for s in SETTINGS_TABLE}
    assert read <= documented, read - documented


def test_milvus_uri_is_a_server_or_a_lite_file() -> None:
    from earmark_runtime.milvus import check_uri, is_lite

    assert check_uri("/var/lib/earmark/vectors.db", "EARMARK_VECTORS_URI").endswith(".db")
    assert check_uri("http://milvus:19530", "EARMARK_VECTORS_URI") == "http://milvus:19530"
    assert is_lite("/tmp/x.db") and not is_lite("http://milvus:19530")
    with pytest.raises(ConfigError, match="EARMARK_VECTORS_URI must be"):
        check_uri("milvus:19530", "EARMARK_VECTORS_URI")
