"""How the lab uses a cluster (`ClusterSettings`), importable without Ray: the app's and the CLI's flags build it
before anything of Ray loads."""

from __future__ import annotations

from dataclasses import dataclass

from deit_demo.core.errors import DeitDemoError


@dataclass(frozen=True)
class ClusterSettings:
    """How the lab uses a cluster: where it is, and how each (model, variant) deployment scales and batches."""

    address: str = "local"  # `local` starts a head here (loopback only); else a Ray head's HOST:PORT
    min_replicas: int = 1
    max_replicas: int = 2
    cpus_per_replica: float = 1.0  # a replica's torch, ONNX Runtime and OpenVINO threads follow it
    max_batch_size: int = 8  # images of several visitors in one pass
    # Sequential calls to a batched method wait this long for company: 0 batches only what queued during a pass,
    # which costs a lone visitor nothing (a 50 ms wait made each sequential call 55 ms instead of 3)
    batch_wait_ms: float = 0.0
    target_ongoing_requests: float = 2.0  # per replica, before the autoscaler adds one
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 120.0
    deploy_deadline_s: float = 600.0  # a deployment not running by then is reported and removed (nothing hangs)

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise DeitDemoError(f"Replicas MIN:MAX need 1 <= MIN <= MAX (got {self.min_replicas}:{self.max_replicas}).")
        if self.cpus_per_replica <= 0 or self.max_batch_size < 1 or self.batch_wait_ms < 0:
            raise DeitDemoError("A replica needs CPUs above 0, a batch of at least 1 and a wait of 0 ms or more.")

    def deployment_options(self, name: str) -> dict:
        return dict(name=name, num_replicas="auto", max_ongoing_requests=max(4, 2 * self.max_batch_size),
                    ray_actor_options={"num_cpus": self.cpus_per_replica}, max_constructor_retry_count=1,
                    autoscaling_config={"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                        "target_ongoing_requests": self.target_ongoing_requests,
                                        "upscale_delay_s": self.upscale_delay_s,
                                        "downscale_delay_s": self.downscale_delay_s,
                                        "look_back_period_s": 2.0, "metrics_interval_s": 0.5})


def parse_replicas(text: str) -> tuple[int, int]:
    """`MIN:MAX` (or one number for both) as two whole numbers."""
    low, _, high = str(text).partition(":")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise DeitDemoError(f"--replicas takes MIN:MAX, e.g. 1:4 (got {text!r}).") from None
