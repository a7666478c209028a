"""`python -m shoal ...` is the `shoal` command (start scripts use this form)."""

from __future__ import annotations

import sys

from shoal.cli.app import main

sys.exit(main())
