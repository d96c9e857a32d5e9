"""The measuring tools' hidden child process: `python -m ovembed.bench.child MODULE:FUNCTION PLAN.json` calls
FUNCTION(plan) and prints the figures it returns as one JSON line, the last on stdout (`common.run_child`)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    target, plan = argv
    module, _, function = target.partition(":")
    figures = getattr(importlib.import_module(module), function)(json.loads(Path(plan).read_text()))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
