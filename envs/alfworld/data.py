"""``agentgym data alfworld``: build ALFWorld games that need no download.

    agentgym data alfworld --rebuild-trial ../shared/data/alfworld/debug-trial
    agentgym data alfworld --generate 60 [--seed 0] [--out DIR]

``--rebuild-trial`` writes the one-agent game into ``data/alfworld/rebuilt``; ``--generate N`` writes
N generated ALFWorld-engine games (NOT the official split), each verified solvable by the handcoded
expert, into ``data/alfworld/generated`` and prints the distribution by task type.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agentgym data alfworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild-trial", metavar="TRIAL_DIR", help="an ALFRED trial folder to rebuild")
    parser.add_argument("--generate", metavar="N", type=int, help="generate N verified games")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--out", help="output folder (default: agentgym's data dir)")
    args = parser.parse_args(argv)
    if args.rebuild_trial is None and args.generate is None:
        parser.print_usage(sys.stderr)
        print("agentgym data alfworld: give --rebuild-trial DIR and/or --generate N", file=sys.stderr)
        return 2
    if args.rebuild_trial is not None:
        from .games import rebuild_trial

        try:
            path = rebuild_trial(args.rebuild_trial, args.out)
        except (FileNotFoundError, ValueError) as err:
            print(f"agentgym data alfworld: {err}", file=sys.stderr)
            return 1
        print(f"rebuilt one-agent game: {path}")
    if args.generate is not None:
        if args.generate < 1:
            print(f"agentgym data alfworld: --generate needs N >= 1, got {args.generate}", file=sys.stderr)
            return 2
        from .generate import generate_games

        report = generate_games(args.generate, seed=args.seed,
                                out=Path(args.out) if args.out else None, progress=True)
        print(report.summary())
    return 0
