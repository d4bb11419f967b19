"""DeiT Deployment Lab: `python app.py [--share] [--host H] [--port P] [--model KEY] [--weights hub|random|PATH]
[--offline]`. Hugging Face Spaces runs it as `python app.py`; host and port then follow Gradio's environment variables
(GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)."""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--model", default="deit_base", help="default model (python -m deit_demo models)")
    parser.add_argument("--weights", default="hub", help="hub | random | PATH (.safetensors or DeiT .pth)")
    parser.add_argument("--offline", action="store_true", help="never reach the hub; random weights unless cached")
    parser.add_argument("--eval-data", default=None, help="labelled image folder: Convert then reports accuracy")
    parser.add_argument("--store", default=None, help="artifact store folder (default $DEIT_DEMO_HOME/artifacts)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported
    from deit_demo.models import get_spec
    from deit_demo.ui import AppConfig, build_app, launch_kwargs

    get_spec(args.model)
    demo = build_app(AppConfig(model=args.model, weights=args.weights, offline=args.offline, store_root=args.store,
                                 eval_data=args.eval_data))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                **launch_kwargs(demo.lab))
    if args.share and not demo.share_url:
        print("Could not open a public share link (no route to the share server); still serving locally at "
              f"{demo.local_url}", file=sys.stderr)
    demo.block_thread()


if __name__ == "__main__":
    main()
