"""Retrain a bundled fixture: ``python -m deit_demo.train digits|synth [options]`` (each trainer's --help lists
them)."""

import sys

TRAINERS = {"digits": "deit_demo.train.digits", "synth": "deit_demo.train.distill_synth"}


def main() -> int:
    usage = f"usage: python -m deit_demo.train {{{'|'.join(TRAINERS)}}} [options] (each trainer's --help lists them)"
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
        print(usage)
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in TRAINERS:
        print(usage, file=sys.stderr)
        return 2
    import importlib

    name = sys.argv.pop(1)
    sys.argv[0] = f"python -m deit_demo.train {name}"
    importlib.import_module(TRAINERS[name]).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
