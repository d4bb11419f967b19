"""Attaching to a Ray cluster, or starting one on this machine, and letting go of what was started.

`--cluster local` starts a Ray head in this process's session, every port on 127.0.0.1; `--cluster HOST:PORT` joins a
running cluster (`ray start --head` on a machine of its own, or KubeRay). Three things learned on Ray 2.60
(docs/SCALING.md has the detail):
- Ray rewrites any 127.0.0.1 it is given into the machine's interface address, unless
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is set before `ray` is imported; then every node, GCS, raylet and agent binds
  127.0.0.1. So a loopback cluster (local, or an address on 127.0.0.1) sets it, and a real one never does.
- `ray.init` to an address where nothing listens retried for about 14 minutes; a socket probe says so in milliseconds.
- Serve's replicas open one gRPC port on all interfaces; `loopback.HOOK` rebinds it on loopback clusters.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from deit_demo.core.errors import DeitDemoError

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Never start a cluster behind the lab's back: after `ray.shutdown`, a Serve handle's metrics thread called `ray.wait`,
# and Ray's auto-connect started a new local cluster from it
QUIET_ENV = {"RAY_ENABLE_AUTO_CONNECT": "0"}
# A driver that joins gives up on an unreachable GCS within seconds, not Ray's minutes (the probe comes first anyway)
JOIN_ENV = {"RAY_gcs_rpc_server_connect_timeout_s": "5", "RAY_py_gcs_connect_timeout_s": "10"}


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT of a Ray head (GCS port, 6379 by default), or a clear error."""
    host, _, port = address.strip().removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeitDemoError(f"--cluster takes 'local' or a Ray head's HOST:PORT (e.g. 10.0.0.5:6379), not {address!r}.")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def probe(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Raise a one-line error unless something accepts connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as err:
        raise DeitDemoError(f"No Ray cluster answers at {host}:{port} ({err.strerror or type(err).__name__}): "
                            f"start one there with `ray start --head --port {port}`, or use --cluster local.") from None


def import_ray(loopback: bool):
    """`ray`, imported with the loopback setting when this cluster lives on 127.0.0.1 (it is read once, on import)."""
    for name, value in {**QUIET_ENV, **(LOOPBACK_ENV if loopback else {})}.items():
        os.environ.setdefault(name, value)
    import ray

    if loopback and ray._private.ray_constants.ENABLE_RAY_CLUSTER:
        raise DeitDemoError("Ray was imported before the lab could keep it on loopback; start the lab in a fresh "
                            "process (or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).")
    return ray


@dataclass
class Attached:
    """The cluster this process is attached to, and what it started there (stopped by `close`)."""

    address: str
    loopback: bool
    started_head: bool
    seconds: float
    apps: set[str] = field(default_factory=set)  # Serve applications this process deployed
    handles: list = field(default_factory=list)  # their handles: each runs threads that must stop before Ray does
    started_serve: bool = False  # Serve was not running on the cluster before this process started it

    def nodes(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def close(self) -> None:
        """Delete what this process deployed, stop Serve if it started it, and the head if it started that."""
        import ray
        from ray import serve
        from ray.serve import context

        if not ray.is_initialized():
            return
        try:
            for handle in self.handles:
                handle.shutdown()
            if context._global_client is not None:
                context._global_client.shutdown_cached_handles()
            if self.started_serve or self.started_head:
                serve.shutdown()
            else:
                for app in list(self.apps):
                    serve.delete(app, _blocking=True)
            context._disconnect()
        finally:
            ray.shutdown()  # for a head started here (address="local"), this stops every process of it

    def serve_running(self) -> bool:
        """Whether Serve's controller runs on the cluster already (someone else's, if this process did not start it)."""
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            return True
        except ValueError:
            return False


def same_machine_env(hook: str) -> dict:
    """A job's workers on this machine: the loopback hook, and this checkout on their path, so that a clone run
    without `pip install -e .` works as it does in one process (a real cluster installs the project on each node)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"worker_process_setup_hook": hook, "env_vars": {"PYTHONPATH": path}}


def attach(address: str, *, num_cpus: int | None = None) -> Attached:
    """Start a local head (`local`) or join the cluster at HOST:PORT; one clear line when that cannot be done."""
    start = time.monotonic()
    if address == "local":
        ray = import_ray(loopback=True)
        from deit_demo.cluster.loopback import HOOK

        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, logging_level="warning",
                 log_to_driver=False, runtime_env=same_machine_env(HOOK))
        return Attached(ray.get_runtime_context().gcs_address, True, True, time.monotonic() - start)
    host, port = parse_address(address)
    probe(host, port)
    loopback = is_loopback(host)
    for name, value in JOIN_ENV.items():
        os.environ.setdefault(name, value)
    ray = import_ray(loopback)
    hook = {}
    if loopback:
        from deit_demo.cluster.loopback import HOOK

        hook = {"runtime_env": same_machine_env(HOOK)}
    try:
        ray.init(address=f"{host}:{port}", logging_level="warning", log_to_driver=False, **hook)
    except (ConnectionError, TimeoutError, RuntimeError) as err:
        raise DeitDemoError(f"Could not join the Ray cluster at {host}:{port}: "
                            f"{str(err).splitlines()[0][:200]}") from None
    return Attached(f"{host}:{port}", loopback, False, time.monotonic() - start)
