"""Shared fixtures: paths to the real data beside the project, small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, where the real sample logs lie (never copied here)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


# Property tests draw the same examples on every run and never fail on time:
# a test that passes or fails by chance or by machine load is a defect.
from hypothesis import settings  # noqa: E402

settings.register_profile("likely", derandomize=True, deadline=None)
settings.load_profile("likely")
