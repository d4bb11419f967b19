"""The library's one door for its entry points: the app and the CLI import this package (and `present`, which shows
what comes back), never the floors below. `Lab` (`lab`) runs every request and job; `AppConfig` (`config`) is what
their flags choose; `sessions`, `jobs` (the door heavy jobs enter), `formats` (the browser formats) and `device` (the
page's results read back) are its parts. Below, the names an entry point needs from the floors beneath: the catalog,
the settings of each job, the results files, the errors. May import every library package below it; never Gradio.
"""

from deit_demo.cluster.settings import ClusterSettings, parse_replicas
from deit_demo.core.cpus import machine_info, usable_cpus
from deit_demo.core.errors import Busy, Cancelled, DeitDemoError, describe, log_unexpected, quoted
from deit_demo.core.models import MODELS, ModelSpec, get_spec
from deit_demo.core.paths import cache_folder, home
from deit_demo.measure.bench import BenchSettings
from deit_demo.measure.budget import check_max_drop
from deit_demo.measure.card import CardSettings, card_markdown
from deit_demo.measure.decide import compare, compare_warnings, pareto_front
from deit_demo.measure.profile import CLASSES, explain, write_traces
from deit_demo.measure.results import expand, load_results, results_payload, save_csv, write_json
from deit_demo.measure.sweep import SweepSettings
from deit_demo.measure.tune import TuneSettings
from deit_demo.serve.auto import AUTO, AUTO_TITLE
from deit_demo.serve.classify import HEAD_TITLES
from deit_demo.serve.settings import ServeSettings
from deit_demo.service.config import AppConfig
from deit_demo.service.fleet import FleetOutcome, node_kinds, run_fleet, save_fleet
from deit_demo.service.lab import ClassifyRequest, ConvertOutcome, DecideOutcome, Lab
from deit_demo.service.process import configure_process
from deit_demo.service.production import Endpoint, pair_from_card, serve_endpoint
from deit_demo.train.distill import Head, TrainingReport
from deit_demo.variants import ORIGINAL, VARIANTS
from deit_demo.variants.pipeline import example_images

__all__ = [
    "AUTO", "AUTO_TITLE", "CLASSES", "HEAD_TITLES", "MODELS", "ORIGINAL", "VARIANTS", "AppConfig",
    "BenchSettings", "Busy", "Cancelled", "CardSettings", "ClassifyRequest", "ClusterSettings", "ConvertOutcome",
    "DecideOutcome", "DeitDemoError", "Endpoint", "FleetOutcome", "Head", "Lab", "ModelSpec", "ServeSettings",
    "SweepSettings", "TrainingReport", "TuneSettings", "cache_folder", "card_markdown", "check_max_drop",
    "compare", "compare_warnings", "configure_process", "describe", "example_images", "expand", "explain",
    "get_spec", "home", "load_results", "log_unexpected", "machine_info", "node_kinds", "pair_from_card",
    "pareto_front", "parse_replicas", "quoted", "results_payload", "run_fleet", "save_csv", "save_fleet",
    "serve_endpoint", "usable_cpus", "write_json", "write_traces",
]
