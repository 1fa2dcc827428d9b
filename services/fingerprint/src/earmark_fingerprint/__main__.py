"""Entry point: `python -m earmark_fingerprint` or `earmark-fingerprint`."""

import asyncio

from .app import run


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
