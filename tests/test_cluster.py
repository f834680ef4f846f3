"""cluster.yaml passes Ray's own launcher schema, and opens nothing to the world."""

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_matches_ray_schema(cluster):
    _validate(cluster)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(Exception, match="min_workers"):  # the check can fail
        _validate(broken)


def test_cluster_yaml_is_closed_by_default(cluster):
    text = (ROOT / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text
    assert cluster["provider"]["use_internal_ips"] is True
    for node_type in cluster["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"], "Ray's default group opens SSH to the world"
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    assert "--host 127.0.0.1" in " ".join(cluster["head_setup_commands"])
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AKIA", "ssh_private_key"):
        assert secret not in text


def test_cluster_installs_the_pinned_project(cluster):
    setup = " ".join(cluster["setup_commands"])
    assert "wrapperdist[ray]" in setup
    assert cluster["file_mounts"]["~/wrapperdist"] == "."
    assert any(n.get("resources") is not None for n in cluster["available_node_types"].values())
    assert cluster["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
