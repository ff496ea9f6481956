"""cluster.yaml (Ray cluster launcher) and deploy/ (KubeRay) load and name what Ray expects."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_launcher_config_has_head_gpu_and_cpu_workers():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types",
                "head_node_type", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in config, key
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU")]
    cpu = [name for name, t in types.items() if name != config["head_node_type"]
           and not t.get("resources", {}).get("GPU")]
    assert gpu and cpu
    for name, node in types.items():
        assert node["node_config"]["InstanceType"], name
        if name != config["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert any("pip install" in c and "labeler" in c for c in config["setup_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])


def test_kuberay_rayjob_runs_the_labeler_cli():
    job = yaml.safe_load((ROOT / "deploy" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("labeler run --ray-address auto")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in cluster["headGroupSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert "rayStartParams" in group and group["template"]["spec"]["containers"][0]["image"]
    limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    # Credentials come from a Kubernetes secret, never written in the manifest.
    text = (ROOT / "deploy" / "rayjob.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY:" not in text and "secretRef" in text
