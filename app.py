"""DeiT Deployment Lab: `python app.py [--share] [--host H] [--port P] [--model KEY] [--weights hub|random|PATH]
[--offline]`. Hugging Face Spaces runs it as `python app.py`; host and port then follow Gradio's environment variables
(GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--model", default="deit_base", help="default model (python -m deit_demo models)")
    parser.add_argument("--weights", default="hub", help="hub | random | PATH (.safetensors or DeiT .pth)")
    parser.add_argument("--offline", action="store_true", help="never reach the hub; random weights unless cached")
    parser.add_argument("--eval-data", default=None, help="labelled image folder: Convert reports accuracy, and "
                        "Decide's accuracy budget is measured on it")
    parser.add_argument("--store", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")
    parser.add_argument("--auto", default=None, metavar="KEYS",
                        help="comma list of the variants Auto may serve once verified (default: "
                             "openvino_int8,onnx_int8_static,pt2e_int8,onnx_int8,scripted_int8; 'none': always the "
                             "original)")
    cluster = parser.add_argument_group("a Ray cluster (docs/SCALING.md): classification on Ray Serve replicas")
    cluster.add_argument("--cluster", default=None, metavar="local|HOST:PORT",
                         help="'local' starts a Ray head on this machine (loopback only); HOST:PORT joins a running "
                              "cluster. Without it, nothing of Ray loads")
    cluster.add_argument("--replicas", default="1:2", metavar="MIN:MAX",
                         help="replicas per (model, variant), scaled on ongoing requests (default 1:2)")
    cluster.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs (and threads) per replica (default 1)")
    cluster.add_argument("--batch-max", type=int, default=8, help="visitors' images batched into one pass (default 8)")
    cluster.add_argument("--batch-wait-ms", type=float, default=0.0,
                         help="how long a pass waits to fill its batch (default 0: only what queued meanwhile)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported
    from deit_demo.app.process import configure_server_process
    from deit_demo.app.ui import build_app, launch_kwargs
    from deit_demo.service import AppConfig, ClusterSettings, DeitDemoError, ServeSettings, parse_replicas

    try:
        auto = {} if args.auto is None else {"auto_variants": () if args.auto == "none" else args.auto.split(",")}
        cluster = None
        if args.cluster:
            low, high = parse_replicas(args.replicas)
            cluster = ClusterSettings(args.cluster, low, high, args.replica_cpus, args.batch_max, args.batch_wait_ms)
        config = AppConfig(model=args.model, weights=args.weights, offline=args.offline, store_root=args.store,
                           eval_data=args.eval_data, serve=ServeSettings(**auto), cluster=cluster)
    except DeitDemoError as err:
        raise SystemExit(f"error: {err}") from None
    # Process-wide settings (GIL switch interval, torch.fx's thread confinement, Gradio's retried imports): here,
    # where the server's process starts, not as a side effect of building the app (see deit_demo/app/process.py).
    configure_server_process()
    # A stop (Ctrl-C, or SIGTERM from a supervisor) runs the `finally` below: what the app started (a local Ray head
    # and its replicas) stops with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        demo = build_app(config)
    except DeitDemoError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        serve_until_stopped(demo, args, launch_kwargs)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        demo.lab.close()


def serve_until_stopped(demo, args, launch_kwargs) -> None:
    # Gradio explains a failed tunnel in a dozen lines; we say it in one and keep serving.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter) if args.share else contextlib.nullcontext():
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                    quiet=True, **launch_kwargs(demo.lab))
    print(f"* Running on local URL:  {demo.local_url}")
    if args.share:
        if demo.share_url:
            print(f"* Public URL: {demo.share_url}")
        else:
            print("* Could not open a public share link (the share server is unreachable from here); still serving "
                  f"locally at {demo.local_url}")
    demo.block_thread()


if __name__ == "__main__":
    main()
