"""``python -m opsdash.demo``: serve the demo upstream until interrupted."""

import argparse
import sys

from opsdash.demo.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsdash.demo",
        description="Serve a MaidCentral look-alike with deterministic data and fault injection.",
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
