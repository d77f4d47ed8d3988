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
