"""The ``barecount`` command.

    barecount doctor                 resolved config, policy, sinks and whether each sink is reachable
    barecount policy validate FILE   validate a policy file; every mistake with file, key path and value
    barecount runs [--dag D] [--last N]   what BareCount recorded per task try (the file sink)
    barecount pools sync [--dry-run] [--prune]   create/update the tenants' Airflow pools through the REST API
    barecount pools check            exit 1 when the pools or their registry differ from the policy
    barecount telemetry forward [--loop S]   export the OTLP spool (the scheduler runs it as its forwarder process)
    barecount evidence list|show|verify|export|redact|flush|seal   the evidence store: records, one record, the hash
                                     chains, an auditor's bundle, redacting a leaked secret, the spool, sealing by hand
    barecount cost report --by tenant [--since 30d]   cost roll-up per day from the evidence index
    barecount dlq stats|list         a dead-letter queue's depth and oldest entry per tenant/pipeline; its letters
    barecount replay plan|run|status   replay a dead-letter queue into a target, idempotently (the replay ledger)
    barecount db migrate|check [--url URL]   create or upgrade BareCount's tables; say whether they are current
    barecount agent heartbeat --name N --api-url URL [--every 30s]   an on-premise agent's heartbeats, until SIGTERM
    barecount health check [--tenant T] [--emit] [--json]   check every dependency of the network profiles now

One module per command (``dlq`` and ``replay`` share :mod:`.recovery`), each with its ``add_parsers`` and its
``cmd_*`` functions; :mod:`.common` holds the option types and the output helpers they share.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from barecount_provider import __version__, redaction
from barecount_provider.cli import (
    agent,
    cost,
    db,
    doctor,
    evidence,
    health,
    policy,
    pools,
    recovery,
    runs,
    telemetry,
)
from barecount_provider.cli.common import fail

COMMANDS = (doctor, policy, runs, pools, evidence, telemetry, cost, recovery, db, agent, health)
"""The command modules, in the order ``barecount --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    """The ``barecount`` parser with every command's subparser."""
    parser = argparse.ArgumentParser(prog="barecount", description="Operate and observe BareCount.")
    parser.add_argument("--version", action="version", version=f"barecount {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


@redaction.redacting_stdio  # every line a command prints, redacted
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; its exit status (2: a configuration mistake, said in one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Standard output is the command's own (one JSON document with --json); every log line, Airflow's and
    # its secrets masker's included, goes to standard error.
    from barecount_provider.telemetry.logging import logs_to_stderr

    logs_to_stderr()
    try:
        return int(args.func(args))
    except ValueError as err:  # configuration mistakes
        return fail("barecount", err, 2)
    except Exception as err:
        from barecount_provider.db import SchemaOutOfDate

        if not isinstance(err, SchemaOutOfDate):
            raise
        return fail("barecount", err, 1)  # names `barecount db migrate`
