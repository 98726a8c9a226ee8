"""Training hardening (issue 13): nothing lost on a refused or failed run, full RNG resume."""

from __future__ import annotations

import numpy as np

from rsprompt.engine.task import _collect_rng, _restore_rng


def test_rng_resume_keeps_numpys_cached_gaussian():
    """The legacy numpy stream resumes exactly, also between the two draws of a Gaussian pair."""
    np.random.seed(123)  # noqa: NPY002 — the global legacy state is what resume restores
    np.random.normal()  # noqa: NPY002 — draws a Box-Muller pair, caches the second value
    assert np.random.get_state()[3] == 1  # noqa: NPY002 — a cached Gaussian is pending
    state = _collect_rng()
    expected = [np.random.normal(), np.random.normal(), np.random.rand()]  # noqa: NPY002
    np.random.seed(999)  # noqa: NPY002 — another process / another stream
    np.random.normal()  # noqa: NPY002
    _restore_rng(state)
    got = [np.random.normal(), np.random.normal(), np.random.rand()]  # noqa: NPY002
    assert got == expected
