"""Shared fixtures and the network safety net: any connection outside loopback fails the test at once."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Ray fixes these when it is first imported, by whichever test file that is: the test clusters' nodes on 127.0.0.1
# (not the machine's interface address), no token file written into ~/.ray, no driver joining a stray cluster
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")


def pytest_configure(config):
    # The tests' process serves apps and converts beside them, as app.py's does: the same process-wide settings,
    # set where it starts (the library never sets them on import).
    from deit_demo.app.process import configure_server_process

    configure_server_process()

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class ForbiddenConnection(AssertionError):
    pass


def _allowed(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address):
        raise ForbiddenConnection(f"test tried to connect outside loopback: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address):
        raise ForbiddenConnection(f"test tried to connect outside loopback: {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


# Longest first (each file's measured total, 2026-12-05: 405 s for test_variants down to about 20 s): the scheduler
# hands out whole files in collection order (`--dist loadfile`), and one long file that started last kept one worker
# busy while the other had finished. The files not named here take seconds and fill in at the end.
LONGEST_FIRST = ("test_variants.py", "test_synth.py", "test_cli.py", "test_cluster.py", "test_handlers.py",
                 "test_fleet.py", "test_browser.py", "test_converter.py", "test_device.py", "test_cluster_local.py",
                 "test_budget.py", "test_faults.py", "test_profile.py", "test_hardening.py", "test_app.py",
                 "test_models.py", "test_digits.py", "test_serve.py", "test_architecture.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "deit_home"
    monkeypatch.setenv("DEIT_DEMO_HOME", str(home))


@pytest.fixture(scope="session")
def tiny():
    from deit_demo.core.models import load_model

    return load_model("deit_tiny", "random")


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """One store for the whole run, shared by the test workers (pytest-xdist): a file converted by one (every
    variant of deit_tiny in test_variants, of deit_synth in test_synth) is reused by the other rather than converted
    again; the store's own lock (`ArtifactStore.converting`) makes a worker wait for a file the other is making."""
    from deit_demo.core.artifacts import ArtifactStore

    base = tmp_path_factory.getbasetemp()
    shared = base.parent / "shared-store" if os.environ.get("PYTEST_XDIST_WORKER") else base / "store"
    return ArtifactStore(shared)
