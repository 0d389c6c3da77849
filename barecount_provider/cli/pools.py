"""``barecount pools sync|check``: the tenants' Airflow pools (``barecount_<tenant>_<runner_class>``) and their
registry, through Airflow's REST API (:mod:`barecount_provider.pools` does the work)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from barecount_provider.cli.common import fail, seconds

if TYPE_CHECKING:
    from barecount_provider.pools import AirflowApi


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount pools sync|check``."""
    pools_parser = sub.add_parser(
        "pools",
        help="the tenants' Airflow pools (barecount_<tenant>_<runner_class>) through Airflow's REST API",
        description="Exit codes: 0 ok / in sync, 1 a call failed (sync) or drift (check), 2 usage, missing "
        "credentials or invalid policy, 3 API unreachable, 4 credentials or permission refused (401/403).",
    )
    pools_sub = pools_parser.add_subparsers(dest="pools_command", metavar="SUBCOMMAND", required=True)
    sync = pools_sub.add_parser(
        "sync",
        help="create and update the pools the policy asks for, then write the registry Variable barecount_pools",
    )
    _add_api_arguments(sync)
    sync.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    sync.add_argument(
        "--prune", action="store_true", help="delete barecount_* pools the sync created that the policy no longer has"
    )
    sync.set_defaults(func=cmd_pools)
    check = pools_sub.add_parser("check", help="compare the pools and the registry with the policy; exit 1 on drift")
    _add_api_arguments(check)
    check.set_defaults(func=cmd_pools)


def _pools_api(args: argparse.Namespace) -> AirflowApi:
    from barecount_provider import pools

    url = args.api_url or os.environ.get("BARECOUNT_API_URL", "")
    if not url:
        raise pools.ApiError(
            "no Airflow API URL: give --api-url or BARECOUNT_API_URL (the API server's [api] base_url)",
            exit_code=pools.EXIT_USAGE,
        )
    credentials = pools.Credentials(
        token=args.token or os.environ.get("BARECOUNT_API_TOKEN") or None,
        username=args.username or os.environ.get("BARECOUNT_API_USERNAME") or None,
        password=args.password or os.environ.get("BARECOUNT_API_PASSWORD") or None,
    )
    return pools.AirflowApi(url, credentials, timeout=args.timeout)


def cmd_pools(args: argparse.Namespace) -> int:
    from barecount_provider import pools
    from barecount_provider.policy import PolicyError

    try:
        api = _pools_api(args)
        if args.pools_command == "sync":
            return pools.sync(api, dry_run=args.dry_run, prune=args.prune)
        return pools.check(api)
    except pools.ApiError as err:
        return fail(f"barecount pools {args.pools_command}", err, err.exit_code)
    except PolicyError as err:
        return fail(f"barecount pools {args.pools_command}", f"invalid policy:\n{err}", pools.EXIT_USAGE)


def _add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="the Airflow API server's URL ([api] base_url); env BARECOUNT_API_URL")
    parser.add_argument("--username", help="user exchanged for a token at /auth/token; env BARECOUNT_API_USERNAME")
    parser.add_argument(
        "--password", help="its password (prefer the env var: arguments show in `ps`); env BARECOUNT_API_PASSWORD"
    )
    parser.add_argument("--token", help="a bearer token instead of a user; env BARECOUNT_API_TOKEN")
    parser.add_argument("--timeout", type=seconds, default=30.0, help="seconds per API call (default 30)")
