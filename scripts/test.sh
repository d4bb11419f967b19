#!/usr/bin/env bash
# Installs everything the tests need (Debian's Chromium for the browser tests, ONNX Runtime Web from the npm registry,
# the pinned Python packages) and runs the whole suite offline. Playwright drives /usr/bin/chromium; it never
# downloads a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING=()
command -v chromium >/dev/null && command -v chromedriver >/dev/null || MISSING+=(chromium chromium-driver)
# the Your device tab's runtime (ONNX Runtime Web) comes from the npm registry
command -v npm >/dev/null || MISSING+=(nodejs npm)
if [ ${#MISSING[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi
npm ci --prefix web --no-audit --no-fund --loglevel=error  # pinned by web/package-lock.json
# The page's pure modules (preprocessing against Python's golden tensors, the timing loop), in Node
node --test tests/js/
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt
python3 -m pip install -q --disable-pip-version-check --no-deps -e .  # the deit-demo command; benchmarks import it
python3 -m ruff check .  # the project's configured rules (pyproject.toml)
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# Two workers on two cores: OpenMP threads that spin at every barrier while the other worker holds the cores made a
# deployment card's 1200 one-image calls take 61 s instead of 8 (docs/PERFORMANCE.md, "Two jobs on two cores").
# Sleeping at barriers changes no answer, only how the two share the machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The cluster tests' throwaway Ray heads: no token file written into ~/.ray (docs/SCALING.md)
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
# Two worker processes (pytest-xdist), one test file each at a time: most of the time goes to conversions and
# compiles, which are single-threaded Python, so a second process uses the second core (16 -> 10 minutes here).
python3 -m pytest -q -p no:cacheprovider --timeout=600 --durations=15 -p no:benchmark -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
