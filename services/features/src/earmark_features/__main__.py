"""Entry point: `python -m earmark_features` or `earmark-features`."""

import asyncio

from .app import run


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
