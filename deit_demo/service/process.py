"""What an entry point sets for its whole process on the library's behalf, in one visible place: the app
(`app.process`) and the CLI call `configure_process` where their process starts; the library never sets any of it
on import or while building something."""

from __future__ import annotations

import sys

from deit_demo.core.errors import quiet_upstream_noise
from deit_demo.variants.base import confine_fx_patches_to_their_thread


def configure_process(*, serving: bool) -> None:
    """Upstream noise dropped (torch's compile chatter); for a process that serves while it converts (`serving`),
    torch.fx's tracer kept on the thread that traces."""
    if serving and not confine_fx_patches_to_their_thread():
        # A trace stays on its thread: while torch.fx traces (Auto converting in the background), it replaces
        # nn.Module.__call__ for the whole process, and a visitor's eager pass on another thread failed inside it.
        print("warning: this torch has no torch.fx patch hook; a conversion may disturb visitors' answers",
              file=sys.stderr)
    quiet_upstream_noise()
