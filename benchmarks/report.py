"""Render the markdown tables of benchmarks/README.md from the JSON results.

Each script writes <name>.json to benchmarks/results (throughput, cost, memory,
sweep_end_to_end); this replaces the text between `<!-- report:<name>:begin -->` and
`<!-- report:<name>:end -->` in benchmarks/README.md with the tables rendered from it (or a
"not measured" line naming the command when the JSON is absent).

    python benchmarks/report.py                          # update benchmarks/README.md in place
    python benchmarks/report.py --results DIR --print    # print only (e.g. the --quick results)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import cost
import memory
import sweep_end_to_end
import throughput

SECTIONS = {
    "throughput": throughput.render,
    "cost": cost.render,
    "memory": memory.render,
    "sweep_end_to_end": sweep_end_to_end.render,
}


def section(name: str, results: Path) -> str:
    path = results / f"{name}.json"
    if not path.exists():
        return f"Not measured yet: run `python benchmarks/{name}.py`, then `python benchmarks/report.py`."
    return SECTIONS[name](json.loads(path.read_text()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=C.RESULTS)
    parser.add_argument("--readme", type=Path, default=C.ROOT / "benchmarks" / "README.md")
    parser.add_argument("--print", action="store_true", help="print the sections instead of editing the README")
    args = parser.parse_args(argv)
    if args.print:
        for name in SECTIONS:
            print(f"## {name}\n\n{section(name, args.results)}\n")
        return
    text = args.readme.read_text()
    for name in SECTIONS:
        pattern = re.compile(rf"(<!-- report:{name}:begin -->\n).*?(\n<!-- report:{name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{args.readme} has no report:{name} markers")
        body = section(name, args.results)
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    args.readme.write_text(text)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
