"""Fixtures for the enforcer core tests. The device fixtures (`swtpm`, `ext4_image`) live in tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest runs with --import-mode=importlib, which puts no test directory on sys.path; the plan
# builders in vp_helpers.py are shared by several test files here.
sys.path.insert(0, str(Path(__file__).parent))
