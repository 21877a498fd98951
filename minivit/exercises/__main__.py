"""``python -m minivit.exercises [list | start NAME | check NAME [FILE] | solution NAME]``.

Exit status: 0 done (or the check passed), 1 the check failed, 2 a problem
with the command (an unknown exercise, a file that exists, ...).
"""

from __future__ import annotations

import argparse
import sys

from minivit import exercises
from minivit.exercises.loader import ExerciseError


def build_parser() -> argparse.ArgumentParser:
    folder = argparse.ArgumentParser(add_help=False)
    folder.add_argument("--dir", default=argparse.SUPPRESS, metavar="FOLDER",
                        help="your exercise folder (default: ./minivit_exercises, or "
                             "$MINIVIT_EXERCISES)")
    p = argparse.ArgumentParser(
        prog="python -m minivit.exercises", parents=[folder],
        description="Write each backward pass yourself; the gradient check grades it.")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", parents=[folder],
                   help="the exercises in order, with your status (the default)")
    s = sub.add_parser("start", parents=[folder],
                       help="write the starter file of an exercise into your folder")
    s.add_argument("name")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    c = sub.add_parser("check", parents=[folder],
                       help="grade your backward against finite differences")
    c.add_argument("name")
    c.add_argument("file", nargs="?", default=None,
                   help="your file (default: <folder>/<name>.py)")
    c.add_argument("--hint", type=int, default=1, choices=range(0, 4), metavar="LEVEL",
                   help="how much help when it fails: 0 none, 1 what is wrong (default), "
                        "2 where to look, 3 the fix")
    o = sub.add_parser("solution", help="show the library's own code for an exercise")
    o.add_argument("name")
    return p


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.dir = getattr(args, "dir", None)
    try:
        if args.command in (None, "list"):
            print(exercises.listing(args.dir))
            return 0
        if args.command == "start":
            ex = exercises.get(args.name)
            path = exercises.start(ex, args.dir, force=args.force, ask=_ask)
            print(f"wrote {path}\nFill in its backward, then run:\n"
                  f"  python -m minivit.exercises check {ex.name}"
                  + (f" --dir {args.dir}" if args.dir else ""))
            return 0
        if args.command == "solution":
            print(exercises.solution(args.name))
            return 0
        result = exercises.check(args.name, args.file, hint=args.hint, folder=args.dir)
        print(result.text)
        if result.passed:
            following = _next(exercises.get(args.name))
            if following:
                print(f"Next: python -m minivit.exercises start {following.name}")
        return 0 if result.passed else 2 if result.problem in ("missing", "unreadable") else 1
    except ExerciseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _next(ex):
    order = list(exercises.EXERCISES)
    i = order.index(ex)
    return order[i + 1] if i + 1 < len(order) else None


if __name__ == "__main__":
    sys.exit(main())
