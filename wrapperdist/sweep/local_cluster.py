"""A multi-node, autoscaling Ray cluster on one machine, for tests, benchmarks and rehearsing the
cluster workflow on a laptop (README, "Run on a cluster"). Not used by sweeps themselves.

It is Ray's fake multi-node provider (`provider: type: fake_multinode`, `RAY_FAKE_CLUSTER=1`):
the head runs `ray start --head --autoscaling-config=…`, and its autoscaler "launches" worker nodes
as extra raylets on this machine. `ray.cluster_utils.AutoscalingCluster` wraps the same provider,
but as installed (Ray 2.60 wheel) it cannot start: it reads the provider's `example.yaml`, which
the wheel does not ship, and it starts and ends the cluster with `ray stop --force`, which would end
every Ray process on the machine. So this module carries its own config and keeps to its own
processes. Measured facts it is built on (Ray 2.60, 2 cores):

- fake workers join the GCS at `provider.gcs_address`, else at <this machine's IP>:6379 — a head on
  another port without that key starts, but no worker ever joins it;
- with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` every node, and every driver, resolves its own address to
  127.0.0.1 (otherwise the machine's external address is used, and a driver given 127.0.0.1 is
  redirected to it);
- `ray start` turns token authentication on: drivers and `ray job submit` are refused without
  `RAY_AUTH_MODE=token` and the token. The cluster gets a token of its own in a private file
  (`RAY_AUTH_TOKEN_PATH`), so `~/.ray/auth_token` is never read or written.

Every process of the cluster carries `WRAPPERDIST_LOCAL_CLUSTER=<id>` in its environment (inherited
by raylets, workers, and the job drivers, which Ray starts in sessions of their own): `stop()`
ends exactly those, by pid.

    python -m wrapperdist.sweep.local_cluster up --dir /tmp/wdc     # prints the env to export
    python -m wrapperdist.sweep.local_cluster down --dir /tmp/wdc
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wrapperdist.sweep.cluster import AUTOSCALING_CONFIG_ENV

MARKER = "WRAPPERDIST_LOCAL_CLUSTER"
HEAD_TYPE = "ray.head.default"  # the name the fake provider gives its head
# Named as an "external" provider: Ray would otherwise fill in defaults from the provider's
# example.yaml, which the wheel does not ship (autoscaler v2 reads them on start and dies).
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head id; workers count up from it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_type(cpus: float = 1, gpus: float = 0, max_workers: int = 2, min_workers: int = 0,
                object_store_mb: int = 150) -> dict[str, Any]:
    """A node type of the fake cluster. GPUs are only advertised: the scheduler counts them, no
    CUDA device exists behind them."""
    resources: dict[str, Any] = {"CPU": cpus, "object_store_memory": object_store_mb * 1024 * 1024}
    if gpus:
        resources["GPU"] = gpus
    return {"resources": resources, "node_config": {}, "min_workers": min_workers, "max_workers": max_workers}


def fake_cluster_config(gcs_port: int, workers: dict[str, dict[str, Any]], max_workers: int | None = None,
                        idle_timeout_minutes: float = 5.0) -> dict[str, Any]:
    """The launcher config the head's autoscaler reads (the fields Ray's own example.yaml has, and
    what autoscaler v2 needs: `launch_multiple`, the head's fixed id)."""
    types = {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}, **workers}
    return {
        "cluster_name": "wrapperdist-local",
        "max_workers": max_workers if max_workers is not None else sum(t["max_workers"] for t in workers.values()),
        "provider": {"type": "external", "module": FAKE_PROVIDER, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{gcs_port}", "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID},
        "available_node_types": types, "head_node_type": HEAD_TYPE, "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes, "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                           "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


@dataclass
class LocalCluster:
    """A head with 0 CPUs (like a cluster's head: it schedules, it does not run trials) and
    autoscaling worker types. `dir` holds the config, token, Ray's temp dir and the state file."""

    dir: Path
    workers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"cpu_worker": worker_type()})
    env_extra: dict[str, str] = field(default_factory=dict)  # into every process of the cluster
    gcs_port: int = 0
    dashboard_port: int = 0
    cluster_id: str = ""
    head_pid: int = 0

    # -- addresses and the environment a client needs ---------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def temp_dir(self) -> Path:
        # Ray's unix sockets live under it: a short path keeps them under the 107-byte limit
        return Path("/tmp") / f"wdc-{self.cluster_id}"

    @property
    def token_path(self) -> Path:
        return Path(self.dir) / "auth_token"

    def client_env(self) -> dict[str, str]:
        """What a driver or `ray job submit` needs to reach this cluster (token auth included)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": self.address,
                "RAY_API_SERVER_ADDRESS": self.dashboard_url}

    # -- start / stop --------------------------------------------------------------------------
    def start(self, timeout_s: float = 90) -> LocalCluster:
        from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

        self.dir = Path(self.dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.cluster_id = uuid.uuid4().hex[:12]
        self.token_path.write_text(generate_new_authentication_token())
        self.token_path.chmod(0o600)
        config = self.dir / "autoscaling.json"
        config.write_text(json.dumps(fake_cluster_config(self.gcs_port, self.workers)))
        # As on a real cluster, jobs' entry points resolve through the nodes' PATH: the project's
        # venv comes first, so `ray job submit -- wrapperdist sweep …` finds the command.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, **self.client_env(), "PATH": path, **self.env_extra, MARKER: self.cluster_id,
               "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               # Autoscaler v2 replaces a node whose raylet died; v1 (with this provider) keeps
               # counting it as a pending node forever, and never launches a replacement.
               "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
               "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
               AUTOSCALING_CONFIG_ENV: str(config)}
        env.pop("RAY_ADDRESS")  # the head starts a cluster, it does not join one
        ray_bin = str(Path(sys.executable).parent / "ray")
        cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
               "--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config}", f"--temp-dir={self.temp_dir}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0"]
        head = subprocess.Popen(cmd, env=env, stdout=(self.dir / "head.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.head_pid = head.pid
        (self.dir / "cluster.json").write_text(json.dumps(self._state()))
        self._wait_for_dashboard(head, timeout_s)
        return self

    def _state(self) -> dict[str, Any]:
        state = asdict(self)
        state["dir"] = str(self.dir)
        return state

    def _wait_for_dashboard(self, head: subprocess.Popen, timeout_s: float) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2).read()
                return
            except urllib.error.HTTPError:
                return  # it answered (401 without the token): it is up
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"local Ray head did not start; see {self.dir / 'head.log'}") from None
                time.sleep(0.5)

    @classmethod
    def attach(cls, dir: str | Path) -> LocalCluster:
        """The cluster whose state `start()` wrote in `dir` (for the `down` command)."""
        state = json.loads((Path(dir) / "cluster.json").read_text())
        return cls(**{**state, "dir": Path(state["dir"])})

    def processes(self) -> list:
        """Every live process of this cluster: the head's session, its descendants, and whatever
        carries the cluster's marker (job drivers run in sessions of their own)."""
        import psutil

        mine = []
        for proc in psutil.process_iter(["pid"]):
            try:
                in_session = proc.pid == self.head_pid or os.getsid(proc.pid) == self.head_pid
                if in_session or proc.environ().get(MARKER) == self.cluster_id:
                    mine.append(proc)
            except (psutil.Error, OSError):
                continue
        return mine

    def stop(self, grace_s: float = 0, keep_logs: Path | None = None) -> int:
        """End every process of this cluster (SIGTERM and `grace_s` to exit, then SIGKILL; the
        default kills at once: the head drains for up to 30 s on SIGTERM, and nothing of a test
        cluster needs saving). `keep_logs` receives a copy of Ray's logs (autoscaler, raylets,
        workers) before the temp dir goes. Returns how many processes were found."""
        import psutil

        procs = self.processes()
        for proc in procs:
            _signal(proc, signal.SIGTERM if grace_s else signal.SIGKILL)
        _, alive = psutil.wait_procs(procs, timeout=grace_s or 5)
        for proc in alive + [p for p in self.processes() if p not in procs]:
            _signal(proc, signal.SIGKILL)  # Ray's agents sometimes ignore SIGTERM
        psutil.wait_procs(alive, timeout=grace_s)
        logs = self.temp_dir / "session_latest" / "logs"
        if keep_logs is not None and logs.is_dir():
            shutil.copytree(logs, keep_logs, dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return len(procs)

    # -- nodes ---------------------------------------------------------------------------------
    def raylet_pid(self, node_id: str) -> int | None:
        for proc in self.processes():
            try:
                args = proc.cmdline()
            except Exception:  # noqa: BLE001 - it ended meanwhile
                continue
            if args and args[0].endswith("/raylet") and f"--node_id={node_id}" in args:
                return proc.pid
        return None

    def node_ids(self) -> list[str]:
        """The nodes whose raylet is alive (the head's included)."""
        found = []
        for proc in self.processes():
            try:
                args = proc.cmdline()
            except Exception:  # noqa: BLE001 - it ended meanwhile
                continue
            if args and args[0].endswith("/raylet"):
                found += [a.split("=", 1)[1] for a in args if a.startswith("--node_id=")]
        return sorted(set(found))

    def nodes_running(self, marker: str) -> list[str]:
        """Worker nodes with a process whose title contains `marker` (e.g. "RayTrainWorker"):
        Ray's workers are children of their node's raylet."""
        found = []
        for proc in self.processes():
            try:
                if marker in " ".join(proc.cmdline()):
                    raylet = proc.parent().cmdline()
                    found += [a.split("=", 1)[1] for a in raylet if a.startswith("--node_id=")]
            except Exception:  # noqa: BLE001 - it ended meanwhile
                continue
        return sorted(set(found))

    def kill_node(self, node_id: str) -> None:
        """Lose a worker node the way a machine dies: SIGKILL its raylet and every process under it
        (workers, agents) at once. Killing the raylet alone leaves its workers running until the
        GCS declares the node dead, so a short stage may still finish on a "lost" node."""
        import psutil

        pid = self.raylet_pid(node_id)
        if pid is None:
            raise LookupError(f"no raylet for node {node_id}")
        raylet = psutil.Process(pid)
        for proc in [raylet, *raylet.children(recursive=True)]:
            _signal(proc, signal.SIGKILL)


def _signal(proc, sig: int) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wrapperdist.sweep.local_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", required=True, help="where the cluster keeps its config, token and logs")
    parser.add_argument("--max-workers", type=int, default=2, help="worker nodes the autoscaler may add")
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per worker node")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs each worker node advertises")
    args = parser.parse_args(argv)
    if args.command == "down":
        print(f"ended {LocalCluster.attach(args.dir).stop()} process(es)")
        return
    workers = {"worker": worker_type(args.cpus, args.gpus, args.max_workers)}
    cluster = LocalCluster(Path(args.dir), workers).start()
    print(f"# local cluster up: dashboard {cluster.dashboard_url}, GCS {cluster.address}")
    for key, value in cluster.client_env().items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    main()
