"""cluster.yaml passes Ray's own launcher schema, opens nothing to the world, and has what a first
`ray up` + `ray job submit` needs: a pinned image with the right Python, the entry point on PATH,
bucket access for the workers, a worker-start timeout that fits a cold GPU node, tracking data that
outlives `ray down`. Checked on the config as Ray's own preparation renders it."""

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def rendered(cluster):
    """The config as the launcher sees it (defaults filled in, node types merged)."""
    return _validate(cluster)


def test_cluster_yaml_matches_ray_schema(cluster):
    _validate(cluster)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(Exception, match="min_workers"):  # the check can fail
        _validate(broken)


def _strings(value) -> list[str]:
    """Every string in a parsed YAML value (keys and values, at any depth)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_cluster_yaml_is_closed_by_default(cluster):
    """On the parsed config, after Ray's own validation: nothing bound to or opened for every address,
    the head's servers on localhost, no credentials."""
    strings = _strings(_validate(cluster))
    assert not [s for s in strings if "0.0.0.0" in s]
    assert cluster["provider"]["use_internal_ips"] is True
    for node_type in cluster["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"], "Ray's default group opens SSH to the world"
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    assert "--host 127.0.0.1" in " ".join(cluster["head_setup_commands"])
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AKIA", "ssh_private_key", "BEGIN"):
        assert not [s for s in strings if secret in s], secret
    # nothing that looks like a key or token: a long run of base64 characters
    assert not [s for s in strings if re.search(r"[A-Za-z0-9+/]{32,}", s)]


def test_cluster_installs_the_pinned_project(cluster):
    setup = " ".join(cluster["setup_commands"])
    assert "wrapperdist[ray]" in setup and "~/venv" not in setup  # the image's Python, on PATH
    assert cluster["file_mounts"]["~/wrapperdist"] == "."
    assert any(n.get("resources") is not None for n in cluster["available_node_types"].values())
    assert cluster["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")


def test_nodes_run_a_pinned_image_with_python_311_and_ray_260(rendered):
    docker = rendered["docker"]
    images = [docker["image"], docker.get("head_image", docker["image"]), docker.get("worker_image", docker["image"])]
    for image in images:
        assert re.fullmatch(r"rayproject/ray:2\.60\.0-py31[1-9]-(cpu|gpu)", image), image
    assert docker["image"].endswith("-gpu") and "--gpus all" in docker["worker_run_options"]
    pinned = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"ray:{pinned}-" in docker["image"]  # the image's Ray is the one the project pins


def test_job_entry_points_are_on_path(rendered):
    setup = rendered["setup_commands"]
    # installed into the image's own Python (its bin/ is on the PATH `ray start` and jobs run
    # with), not into a venv that no job's shell activates; and checked at `ray up` time
    assert any(cmd.startswith("pip install") and "wrapperdist[ray]" in cmd for cmd in setup)
    assert "command -v wrapperdist" in " ".join(setup)


def test_workers_can_write_the_bucket(rendered):
    worker = rendered["available_node_types"]["gpu_worker"]["node_config"]
    assert "instance-profile/" in worker["IamInstanceProfile"]["Arn"]


def test_worker_start_timeout_fits_a_cold_gpu_node(rendered):
    from wrapperdist.sweep.spec import ResourcesConfig

    # boot + image pull + pip: minutes. One source, the spec: the driver sets it in every trial, on
    # any cluster it attaches to; a launcher-file value would only be overridden (or be missing)
    assert ResourcesConfig().worker_start_timeout_s >= 900
    for commands in (rendered["head_start_ray_commands"], rendered["worker_start_ray_commands"]):
        start = " ".join(commands)
        assert "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S" not in start, start
        assert "RAY_AUTH_MODE=token" in start


def test_tracking_data_outlives_ray_down(rendered):
    server = " ".join(rendered["head_setup_commands"])
    assert re.search(r"--artifacts-destination s3://", server)  # artifacts in the bucket
    db = re.search(r"--backend-store-uri sqlite:///(\S+)", server).group(1)
    guide = (ROOT / "docs" / "cluster.md").read_text()
    # the database stays on the head: the cluster guide fetches it before the cluster goes
    fetch = guide.find(f"ray rsync-down cluster.yaml {db.replace('$HOME', '/home/ray')}")
    down = guide.rfind("ray down cluster.yaml")
    assert 0 <= fetch < down, "docs/cluster.md must rsync-down the MLflow database before `ray down`"
    assert rendered["provider"]["cache_stopped_nodes"] is False  # which is why it must be fetched


def test_the_one_internal_ray_path_still_exists():
    """sweep/cluster.py's pin_autoscaling_coordinator is the one place that imports Ray internals
    (there is no public API for the coordinator Ray Train v2 asks for resources). It returns False
    where the path is gone, which would silently bring back the node-loss hang: a Ray upgrade that
    moves it must fail here instead."""
    import importlib

    module = importlib.import_module("ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator")
    assert callable(module.get_or_create_autoscaling_coordinator)
    internal = [p for p in (ROOT / "wrapperdist").rglob("*.py")
                if "ray.data._internal" in p.read_text() and p.name != "cluster.py"]
    assert not internal, f"Ray internals imported outside sweep/cluster.py: {internal}"
