"""``rsprompt`` with the test-only method ``tiny`` registered, for subprocesses of the tests.

``python tests/scale_runner.py predict …`` is ``rsprompt predict …`` where checkpoints of the
``tiny`` method (``tests/engine_fixtures.py``) load: importing engine_fixtures outside pytest
registers it. Lightning's launcher re-executes this same file for every extra rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_fixtures  # noqa: F401  (registers "tiny")

from rsprompt.cli import main

if __name__ == "__main__":
    main()
