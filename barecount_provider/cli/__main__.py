"""``python -m barecount_provider.cli``: the ``barecount`` command (the scheduler starts its forwarder so)."""

from __future__ import annotations

import sys

from barecount_provider.cli import main

sys.exit(main())
