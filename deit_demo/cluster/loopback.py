"""A worker-process setup hook for clusters kept on loopback: Ray Serve 2.60 replicas open their inter-deployment
gRPC server on all interfaces ("[::]:0", hard-coded in ray/serve/_private/replica.py, no setting), even when every
node and the proxy are on 127.0.0.1. This rebinds it to 127.0.0.1. It patches a private name: check it on every Ray
upgrade (tests/test_cluster.py lists every Ray process's listening sockets)."""

from __future__ import annotations


def bind_replica_grpc_to_loopback() -> None:
    try:
        import ray.serve._private.replica as replica
        from ray._common.tls_utils import add_port_to_grpc_server
    except ImportError:  # another Ray: nothing to patch, and the loopback test says so
        return

    def loopback(server, address: str):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return add_port_to_grpc_server(server, address)

    replica.add_port_to_grpc_server = loopback


HOOK = f"{__name__}.bind_replica_grpc_to_loopback"
