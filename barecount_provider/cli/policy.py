"""``barecount policy validate FILE``: every mistake of a policy file, with its key path and value."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount policy validate``."""
    policy = sub.add_parser("policy", help="governance policy commands")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    validate = policy_sub.add_parser("validate", help="validate a policy file and report every mistake")
    validate.add_argument("file", help="path of the policy YAML file")
    validate.set_defaults(func=cmd_policy_validate)


def cmd_policy_validate(args: argparse.Namespace) -> int:
    from barecount_provider.policy import validate_file

    problems = validate_file(args.file)
    if problems:
        for problem in problems:
            print(str(problem), file=sys.stderr)
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0
