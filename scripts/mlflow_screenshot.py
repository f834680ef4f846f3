"""Look at a sweep the way a person would: start `mlflow server` on 127.0.0.1 over a store, open the
latest sweep run's page in headless Chromium, and save screenshots (the run's overview with its
description, and the report's accuracy figure in the Artifacts tab). The server is stopped after.

    python scripts/mlflow_screenshot.py [--store sqlite:///mlflow.db] [--experiment wrapperdist] [--out shots]

Needs Chromium (`apt-get install chromium`, or set $CHROMIUM). Run it after `make demo` (the report
must have been logged: `analysis/report.py` does that)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri, ui_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"mlflow server did not start on port {port}") from None
            time.sleep(0.5)


def screenshot(chromium: str, url: str, out: Path, size: str) -> None:
    # virtual time lets the single-page app fetch and render before the shot is taken
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=25000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"{out}  <-  {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="backend store URI (default: as the project resolves it)")
    parser.add_argument("--experiment", default="wrapperdist")
    parser.add_argument("--out", type=Path, default=Path("shots"))
    parser.add_argument("--size", default="1600,2200", help="browser window, WIDTH,HEIGHT")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("no Chromium found: apt-get install chromium, or set $CHROMIUM", file=sys.stderr)
        return 2
    store = args.store or resolve_tracking_uri()
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(args.experiment)
    sweeps = client.search_runs([exp.experiment_id], f"tags.`{STAGE_TAG}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    if not sweeps:
        print(f"no sweep run in experiment {args.experiment!r} of {store}", file=sys.stderr)
        return 2
    run_id = sweeps[0].info.run_id
    port = free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "mlflow-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", store],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(port, server, timeout=180)
        base = f"http://127.0.0.1:{port}"
        screenshot(chromium, ui_url(base, exp.experiment_id), args.out / "runs.png", args.size)
        screenshot(chromium, ui_url(base, exp.experiment_id, run_id), args.out / "sweep-run.png", args.size)
        figure = f"{ui_url(base, exp.experiment_id, run_id)}/artifacts/report/accuracy.png"
        screenshot(chromium, figure, args.out / "sweep-run-figure.png", args.size)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: one process group, ours
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
