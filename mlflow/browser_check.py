"""Check in headless Chromium that the MLflow UI shows a sweep as mlflow/README.md promises, and take its screenshots.

    .venv/bin/python mlflow/browser_check.py                      # screenshots into docs/mlflow/
    .venv/bin/python mlflow/browser_check.py --out /tmp/shots --keep /tmp/bc

Runs a tiny sweep into a temporary store (tune/search.py --smoke-test, 1-4 minutes), starts mlflow/ui.sh over it on a
free loopback port, opens the link ui.sh prints and the experiment's own page in Debian's `chromium` (a fresh
profile each: what a first visit shows; `apt-get install chromium`), and checks the rendered page: model training
(not GenAI), the parent run and every trial as rows, each trial's varied params and `valid/auc`. Exit 0 on success,
1 with one line saying what is missing otherwise; the UI server and the browser are stopped either way.
"""

import argparse
import html.parser
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sellarec.experiment.tracking import client_for, latest_parent, search_runs

ROOT = Path(__file__).resolve().parent.parent
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
WINDOW = "2200,900"   # wide enough that the grid renders every column (it leaves off-screen columns out)
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class CheckFailed(Exception):
    """What the rendered page lacks (one line)."""


class GridCells(html.parser.HTMLParser):
    """The runs grid of a rendered page: {run id: {column id: cell text}} (a row spans the pinned and main parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._depth, self._row, self._cell = 0, None, None   # (run id, depth), (column id, depth)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        self._depth += 1
        found = dict(attrs)
        if found.get("row-id") and found.get("role") == "row":
            self._row = (found["row-id"], self._depth)
        elif self._row and found.get("col-id") and found.get("role") == "gridcell":
            self._cell = (found["col-id"], self._depth)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self._cell and self._cell[1] == self._depth:
            self._cell = None
        if self._row and self._row[1] == self._depth:
            self._row = None
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._row and self._cell:
            cells = self.rows.setdefault(self._row[0], {})
            cells[self._cell[0]] = cells.get(self._cell[0], "") + data


def run_sweep(tmp: Path) -> str:
    """The tiny sweep into ``tmp``; returns its tracking URI."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [sys.executable, "tune/search.py", "--smoke-test", "--storage", str(tmp), "--tracking-uri", uri,
           "--name", "browser-check"]
    with open(tmp / "search.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=1200)
    if done.returncode != 0:
        raise CheckFailed(f"the sweep failed (exit {done.returncode}): see {tmp / 'search.log'}")
    return uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(uri: str, port: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """mlflow/ui.sh over ``uri``: the server process and the sweep link it printed, once the server answers."""
    log = open(log_path, "w")
    server = subprocess.Popen(["bash", str(ROOT / "mlflow" / "ui.sh"), uri], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **ENV, "PORT": str(port)},
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        link = re.search(r"^latest sweep: (\S+)$", log_path.read_text(), re.M)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            if link:
                return server, link.group(1)
        except OSError:
            pass
        time.sleep(1)
    stop(server)
    raise CheckFailed(f"mlflow/ui.sh printed no sweep link or never answered on port {port}: see {log_path}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to a process this script started (its own session), SIGKILL to that session if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def chromium(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page as rendered by headless Chromium (its DOM after 15 s of virtual time); a PNG too with ``screenshot``."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise CheckFailed("no chromium on PATH: apt-get install -y chromium")
    action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WINDOW}",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", *action, url]
    browser = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        dom, _ = browser.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        raise CheckFailed(f"chromium did not finish rendering {url} in 180 s") from None
    return dom


def check_sweep_view(dom: str, parent, trials) -> None:
    """The link's page: model training, the parent and every trial as rows, their varied params and valid/auc."""
    if "workflowType=genai" in dom:
        raise CheckFailed("the sweep link opened the GenAI view, not model training")
    grid = GridCells()
    grid.feed(dom)
    if parent.info.run_id not in grid.rows:
        raise CheckFailed(f"the parent run {parent.info.run_name!r} is not a row of the runs view")
    for trial in trials:
        cells = grid.rows.get(trial.info.run_id)
        if cells is None:
            raise CheckFailed(f"trial {trial.info.run_name!r} is not a row of the runs view")
        shown = cells.get("metrics.`valid/auc`", "")
        if not re.fullmatch(r"[-+.\deE]+", shown) or not math.isclose(float(shown), trial.data.metrics["valid/auc"]):
            raise CheckFailed(f"trial {trial.info.run_name!r} shows valid/auc {shown!r}, "
                              f"not {trial.data.metrics['valid/auc']}")
        for key in trial.data.tags["varied"].split(","):
            if cells.get(f"params.`{key}`") != trial.data.params[key]:
                raise CheckFailed(f"trial {trial.info.run_name!r} shows {key} = {cells.get(f'params.`{key}`')!r}, "
                                  f"not {trial.data.params[key]!r}")


def check_experiment_page(dom: str, parent) -> None:
    """The experiment's own page (the switch on model training): the runs view with the sweep's parent run."""
    grid = GridCells()
    grid.feed(dom)
    if "No data" in dom or parent.info.run_id not in grid.rows:
        raise CheckFailed("the experiment page with workflowType=machine_learning does not open on the runs view")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow", help="folder for the screenshots")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    os.environ.update(ENV)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="browser-check-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        uri = run_sweep(tmp)
        server, link = start_ui(uri, free_port(), tmp / "ui.log")
        client = client_for(uri)
        parent = latest_parent(client)
        trials = search_runs(client, parent.info.experiment_id, {"mlflow.parentRunId": parent.info.run_id})
        check_sweep_view(chromium(link, tmp / "chrome-1"), parent, trials)
        experiment = link.split("/runs?")[0] + "?workflowType=machine_learning"
        check_experiment_page(chromium(experiment, tmp / "chrome-2"), parent)
        chromium(link, tmp / "chrome-3", args.out / "sweep-runs.png")
        chromium(experiment, tmp / "chrome-4", args.out / "experiment-runs.png")
    except CheckFailed as failure:
        print(f"browser check failed: {failure}")
        return 1
    finally:
        if server is not None:
            stop(server)
    if args.keep is None:   # a failed check keeps its folder: the sweep's and the UI's logs are there
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"browser check passed: {len(trials)} trials of sweep {parent.info.run_name!r} with their params and "
          f"valid/auc in the runs view of {link}; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
