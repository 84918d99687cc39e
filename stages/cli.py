"""`trainflow` command line: verify a package, print the leaderboard or a run's trials.

trainflow verify artifacts/rt-sentiment/<version>
trainflow leaderboard [--artifact-root artifacts] [--limit 20]
trainflow trials [--artifact-root artifacts] [--run RUN_KEY]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.errors import PackageVerificationError
from stages.publish import verify_package
from stages.records import format_table, leaderboard, query


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="check a package against its SHA256SUMS")
    p_verify.add_argument("package", type=Path)
    for name in ("leaderboard", "trials"):
        p = sub.add_parser(name)
        p.add_argument("--artifact-root", type=Path, default=Path("artifacts"))
        p.add_argument("--limit", type=int, default=20)
        if name == "trials":
            p.add_argument("--run", default=None, help="run key (Metaflow run id); default: all")
    args = parser.parse_args(argv)

    if args.command == "verify":
        try:
            files = verify_package(args.package)
        except PackageVerificationError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        print(f"OK: {args.package} ({len(files)} files match SHA256SUMS)")
        return 0
    if args.command == "leaderboard":
        print(format_table(*leaderboard(args.artifact_root, args.limit)))
        return 0
    where = "WHERE run_key = ?" if args.run else ""
    sql = (
        "SELECT run_key, number, state, worker, round(value, 4) AS value, params, round(duration_s, 1) AS seconds "
        f"FROM trials {where} ORDER BY run_key, number LIMIT ?"
    )
    print(format_table(*query(args.artifact_root, sql, ([args.run] if args.run else []) + [args.limit])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
