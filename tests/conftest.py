"""Test harness: 8 simulated CPU devices for every run, so sharding is exercised everywhere."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO_DIR = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """../shared beside the checkout (read-only reference material and ml-4m fixtures)."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"expected the shared folder at {SHARED_DIR} (a checkout of ../shared)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    return REPO_DIR


@pytest.fixture(scope="session")
def import_tool():
    """Imports tools/<name>.py as a module (the tools are scripts, not a package)."""
    def load(name: str):
        sys.path.insert(0, str(REPO_DIR / "tools"))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(REPO_DIR / "tools"))
    return load
