"""Entry point: `python -m earmark_ingest` or `earmark-ingest`."""

import asyncio

from .app import run


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
