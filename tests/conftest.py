"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Real ISPRS crops (never copied into the repository); tests skip when absent.
SHARED_DATA = ROOT.parent / "shared" / "data"

# Small CPU machines: keep torch from oversubscribing the cores in every test process.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skip the test when it is absent (a fresh clone alone).

    With ``RSPROMPT_REQUIRE_SHARED_DATA=1`` (CI's ``.ci/run``: ../shared sits beside its clone)
    an absent folder fails the test instead: the only tests on real ISPRS pixels cannot silently
    skip there.
    """
    if not SHARED_DATA.is_dir():
        from helpers import skip_unless_required

        skip_unless_required(
            f"real sample data not found at {SHARED_DATA} (only CI and developers have it)",
            "RSPROMPT_REQUIRE_SHARED_DATA",
        )
    return SHARED_DATA


@pytest.fixture
def tiny_method() -> Iterator[str]:
    """The test-only method ``tiny`` (tests/engine_fixtures.py), registered for one test only.

    Use ``pytestmark = pytest.mark.usefixtures("tiny_method")`` for a whole module, or
    ``engine_fixtures.registered_tiny()`` as a context manager.
    """
    import engine_fixtures

    with engine_fixtures.registered_tiny() as name:
        yield name


#: Not test modules: the fixture-folder writers (three ``make.py``, loaded by path where used)
#: would clash by name when ``--doctest-modules`` imports every ``.py`` file under tests/.
collect_ignore_glob = ["data/*"]
