"""The golden tensors the page's preprocessing is tested against in Node (tests/js/) are what the server's
preprocessing makes today: a change to core.images.preprocess or to PIL's decoding shows here, not as a page that
silently disagrees with the server."""

import gzip
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("golden_tensors", ROOT / "scripts" / "golden_tensors.py")
golden_tensors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_tensors)


def _content(name: str, data: bytes):
    if name.endswith(".json"):
        return json.loads(data)
    return gzip.decompress(data) if name.endswith(".gz") else data


def test_committed_golden_tensors_match_preprocess():
    made = golden_tensors.golden_files()
    committed = {p.name: p.read_bytes() for p in golden_tensors.FOLDER.iterdir()}
    assert sorted(committed) == sorted(made), "run scripts/golden_tensors.py"
    for name, data in made.items():
        assert _content(name, committed[name]) == _content(name, data), f"{name} changed: run scripts/golden_tensors.py"
