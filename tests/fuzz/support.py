"""What every fuzz module shares: bounded, reproducible settings, the kept corpus,
and byte-level mutation of seed files.

`make test` runs each fuzzer for a small, fixed (derandomized) number of
examples, so the suite costs seconds and never flakes. A longer, random hunt:

    EARMARK_FUZZ_EXAMPLES=5000 .venv/bin/pytest -q tests/fuzz -p no:cacheprovider

A failing example of such a run is written to tests/fuzz/corpus/<kind>/found-<test>.*
(the last one written is the shrunk, minimal example); give it a name that says what
it found, fix the bug, and keep the file: tests/fuzz/test_corpus.py replays every
file of the corpus on every `make test`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"
LONG_RUN_EXAMPLES = int(os.environ.get("EARMARK_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(examples: int) -> settings:
    """`examples` fixed examples in CI; EARMARK_FUZZ_EXAMPLES random ones in a long run."""
    long_run = LONG_RUN_EXAMPLES > 0
    return settings(
        max_examples=LONG_RUN_EXAMPLES if long_run else examples,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=long_run,
    )


def corpus_files(kind: str) -> list[Path]:
    folder = CORPUS / kind
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md")


def seeds(kind: str = "audio") -> list[bytes]:
    return [p.read_bytes() for p in corpus_files(kind) if p.name.startswith("seed-")]


@contextmanager
def kept_on_failure(kind: str, test_name: str, data: bytes, suffix: str = ".bin") -> Iterator[None]:
    """In a long run, write the input of a failing example into the corpus."""
    try:
        yield
    except BaseException:
        if LONG_RUN_EXAMPLES > 0:
            path = CORPUS / kind / f"found-{test_name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        raise


# Values that break size and count fields: zero, one, sign bits, all ones.
INTERESTING_U32 = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def mutated(draw: st.DrawFn, bases: list[bytes], max_ops: int = 6) -> bytes:
    """A seed file with a few byte-level mutations, biased towards the header."""
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, max_ops))):
        size = len(data)
        pos = draw(st.one_of(st.integers(0, min(size, 96)), st.integers(0, max(0, size))))
        op = draw(st.sampled_from(("flip", "byte", "u32", "truncate", "insert", "delete", "dup")))
        if op == "flip" and pos < size:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and pos < size:
            data[pos] = draw(st.integers(0, 255))
        elif op == "u32":
            value = draw(st.sampled_from(INTERESTING_U32))
            order = draw(st.sampled_from(("little", "big")))
            data[pos : pos + 4] = value.to_bytes(4, order)  # type: ignore[arg-type]
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "dup" and size:
            length = draw(st.integers(1, 256))
            data[pos:pos] = data[pos : pos + length]
    return bytes(data)
