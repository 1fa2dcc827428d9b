"""Entry point: `python -m earmark_search` or `earmark-search`."""

import asyncio

from .app import run


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
