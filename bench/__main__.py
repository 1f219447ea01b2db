"""`python -m bench [--quick] [--only a,b]`: run benchmarks, write JSON + SUMMARY.md."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from bench import report

BENCHMARKS = ["e2e", "transport", "overlap", "weights", "reward", "memory", "learner"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="small sizes: minutes on a 2-core CPU")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or BENCHMARKS
    paths, failed = [], []
    for name in names:
        print(f"== bench {name}{' (quick)' if args.quick else ''}", flush=True)
        try:
            result = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            failed.append(name)
            continue
        paths.append(report.write(result))
    order = {n: i for i, n in enumerate(BENCHMARKS)}

    def table(folder):
        found = sorted(folder.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
        return report.summary(found) if found else "(none yet)\n"

    text = ("Each goal's verdict with the limit that stops an unmet one, measured: bench/README.md, "
            "\"Where the goals stand\".\n\n"
            f"## Full sizes (`make bench`)\n\n{table(report.RESULTS)}\n"
            f"## Quick sizes (`make bench QUICK=1`)\n\n{table(report.RESULTS / 'quick')}")
    (report.RESULTS / "SUMMARY.md").write_text(text)
    print(text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
