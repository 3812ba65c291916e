"""``python -m labkit.analysis.dashboards [--check]``: regenerate the committed dashboard JSON, or check it."""

from __future__ import annotations

import argparse
import sys

from labkit.analysis import dashboards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.analysis.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say which committed files are stale (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        old = dashboards.stale()
        for name in old:
            print(f"{dashboards.path(name)} is stale: run python -m labkit.analysis.dashboards", file=sys.stderr)
        return 1 if old else 0
    for file in dashboards.write():
        print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
