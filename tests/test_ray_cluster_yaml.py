import json
from pathlib import Path

import jsonschema
import ray
import yaml

from tests.conftest import REPO


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)

    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu_types = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu_types, "a GPU worker node type is required"
    assert any(".[gpu]" in cmd for cmd in config["setup_commands"])
    assert any("--dashboard-port=8265" in cmd for cmd in config["head_start_ray_commands"])


def test_bad_cluster_yaml_is_rejected():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config["max_workerz"] = 3
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted an unknown top-level key")


def test_gpu_nodes_stop_on_a_driver_older_than_cuda_13_needs(tmp_path):
    """The first setup command refuses an NVIDIA driver below 580 (torch 2.13.0 from PyPI is a CUDA 13 build),
    and passes a newer one and a node without GPUs: run with a stand-in nvidia-smi."""
    import subprocess

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    check = next(cmd for cmd in config["setup_commands"] if "nvidia-smi" in cmd)
    for driver, ok in (("575.57.08", False), ("580.65.06", True), (None, True)):
        bin_dir = tmp_path / str(driver)
        bin_dir.mkdir()
        if driver:
            (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho {driver}\n")
            (bin_dir / "nvidia-smi").chmod(0o755)
        proc = subprocess.run(["bash", "-c", check], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, (driver, proc.stderr)
        assert ok or "older than 580" in proc.stderr
    assert any("3, 11" in cmd for cmd in config["setup_commands"])
