"""Entry point: `python -m earmark_monitor` or `earmark-monitor`."""

import asyncio

from .app import run


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
