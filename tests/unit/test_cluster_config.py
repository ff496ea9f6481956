"""cluster.yaml (Ray cluster launcher) and deploy/ (KubeRay) load and name what Ray expects."""

import shlex
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
    # Ray's own launcher schema, shipped in the ray package.
    import json

    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # The checkout is copied to every node without the virtual environment (gigabytes).
    assert ".gitignore" in config["rsync_filter"] and ".venv/" in (ROOT / ".gitignore").read_text()
    # The head keeps Ray's own role (EC2 access the autoscaler needs): no profile of ours.
    assert "IamInstanceProfile" not in types[config["head_node_type"]]["node_config"]


def test_kuberay_rayjob_runs_the_labeler_cli():
    job = yaml.safe_load((ROOT / "deploy" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("labeler run --ray-address auto")
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True  # else min/maxReplicas change nothing
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in cluster["headGroupSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert "rayStartParams" in group and group["template"]["spec"]["containers"][0]["image"]
    limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    # The entrypoint is a valid job whose model pool grows onto every GPU worker the group
    # may have, one actor per GPU, starting with the first.
    from labeler.cli import _spec_from_args, build_parser

    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "labeler"
    (task,) = _spec_from_args(build_parser().parse_args(argv[1:])).tasks
    assert task.resources.num_gpus == 1 and task.resources.min_actors == 1
    assert task.resources.max_actors == groups["gpu"]["maxReplicas"]
    # Credentials come from a Kubernetes secret, never written in the manifest.
    text = (ROOT / "deploy" / "rayjob.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY:" not in text and "secretRef" in text


def test_kuberay_rayservice_serves_the_labeler_application(monkeypatch):
    """The RayService names what KubeRay reads, and its Serve config's application resolves
    to labeler.serve.builder:build_app, whose args validate (no Serve, no weights)."""
    import importlib

    from ray.serve import Application

    from labeler.serve.builder import build_app

    text = (ROOT / "deploy" / "rayservice.yaml").read_text()
    service = yaml.safe_load(text)
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    spec = service["spec"]
    assert isinstance(spec["serveConfigV2"], str)  # KubeRay takes the Serve config as text
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    # Ray's own Serve config schema, which the dashboard checks KubeRay's config against.
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["http_options"]["port"] == 8000  # KubeRay's serve service port
    (app,) = serve_config["applications"]
    assert app["name"] and app["route_prefix"] == "/"
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert builder is build_app
    monkeypatch.setenv("LABELER_API_TOKENS", "from-the-secret")
    assert isinstance(builder(app["args"]), Application)

    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in cluster["headGroupSpec"]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"] and worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Tokens and credentials come from Kubernetes secrets, never written in the manifest.
    for container in (head, worker):
        assert {e["secretRef"]["name"] for e in container["envFrom"]} == {"labeler-s3", "labeler-api"}
    assert "LABELER_API_TOKENS:" not in text and "api_tokens" not in text


def test_serve_application_args_are_checked_field_by_field(monkeypatch):
    import pytest

    from labeler.config import SpecError
    from labeler.serve.builder import build_app, serve_spec_from_args

    model = {"task": "detect", "model": {"family": "owlv2", "source": "some/owlv2"}}
    assert serve_spec_from_args({"models": [model]}).models[0].labels_per_request
    cases = [
        ({"models": [{**model, "threshold": 2}]}, "models.0.threshold: Input should be less than or equal to 1"),
        ({"models": [{**model, "task": "dance"}]}, "models.0.task: unknown task 'dance'"),
        ({"models": [model], "limits": {"max_pixel": 5}}, "limits.max_pixel: unknown field; did you mean 'max_pixels'?"),
        ({"models": [model], "port": 8000}, "port: where Serve listens is set by the Serve config's http_options"),
        ({}, "models: Field required"),
    ]
    for args, message in cases:
        with pytest.raises(SpecError, match="invalid serve application args") as err:
            serve_spec_from_args(args)
        assert message in str(err.value), str(err.value)
    monkeypatch.delenv("LABELER_API_TOKENS", raising=False)
    with pytest.raises(SpecError, match="api_tokens: no API token configured"):
        build_app({"models": [model]})


def test_the_image_the_manifests_run_is_built_on_their_ray_version():
    """Dockerfile: FROM the Ray image of the version the manifests' clusters run (KubeRay
    starts that Ray in the image) and of the installed one, which the tests ran against;
    what it copies is what the package needs to install."""
    import re

    import ray

    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", dockerfile, re.M)
    assert base and base.group(1) == ray.__version__
    for name in ("rayjob.yaml", "rayservice.yaml"):
        manifest = yaml.safe_load((ROOT / "deploy" / name).read_text())
        cluster = manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]
        assert cluster["rayVersion"] == ray.__version__, name
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    torch_pins = re.search(r'TORCH_SPEC=\$\{LABELER_TORCH:-"([^"]+)"\}', setup).group(1).split()
    assert all(f'"{pin}"' in dockerfile for pin in torch_pins)
    # The Ray cluster launcher's nodes install the same torch build.
    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    setup_commands = " ".join(launcher["setup_commands"])
    assert all(f'"{pin}"' in setup_commands for pin in torch_pins)
    # ... and the Ray the tests ran against, on every node alike, on the image's Python.
    assert f'"ray[data,serve]=={ray.__version__}"' in setup_commands
    python = f"{base.group(2)}.{base.group(3)}"
    assert f"uv venv --seed --python {python} ~/venv" in setup_commands, python
    for copied in ("pyproject.toml", "README.md", "labeler"):
        assert (ROOT / copied).exists() and copied in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored


def test_readme_grants_ray_head_role_the_workers_profiles():
    """Workers launched with an instance profile need the head's role to hold iam:PassRole
    for it, which Ray's default head role (AmazonEC2FullAccess, AmazonS3FullAccess) lacks:
    the README's one-time IAM commands create each worker profile and grant exactly that
    to the role Ray names, else EC2 refuses every worker launch."""
    import re

    from ray.autoscaler._private.aws.config import DEFAULT_RAY_IAM_ROLE

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert "IamInstanceProfile" not in head  # Ray's default role, the one granted below
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"]
                for t in config["available_node_types"].values()
                if "IamInstanceProfile" in t["node_config"]}
    assert profiles
    readme = (ROOT / "README.md").read_text()
    grant = re.search(r"aws iam put-role-policy --role-name (\S+) .*?\}\]\}'", readme, re.S)
    assert grant and grant.group(1) == DEFAULT_RAY_IAM_ROLE
    assert '"Action": "iam:PassRole"' in grant.group(0)
    for name in profiles:
        assert f":role/{name}\"" in grant.group(0), name
        assert f"--instance-profile-name {name}" in readme, name


# vCPUs and NVIDIA GPUs of the EC2 instance types cluster.yaml uses or suggests (AWS's
# instance type pages); a node type's `resources` overrides what Ray would detect.
EC2_CPUS_GPUS = {"m6i.2xlarge": (8, 0), "c6i.4xlarge": (16, 0), "g5.2xlarge": (8, 1),
                 "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)}


def test_worker_resources_are_those_of_their_instance_type():
    """Ray schedules on a node type's declared `resources` (they override what it detects
    from the instance type): a GPU type switched to p4d.24xlarge with {GPU: 1} left in place
    would run one of its 8 GPUs. The head declares CPU 0 on purpose (no model or decode work)."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for name, node in config["available_node_types"].items():
        instance = node["node_config"]["InstanceType"]
        assert instance in EC2_CPUS_GPUS, f"{name}: add {instance}'s vCPUs and GPUs to the table"
        if name == config["head_node_type"]:
            continue
        cpus, gpus = EC2_CPUS_GPUS[instance]
        resources = node["resources"]
        assert (resources.get("CPU"), resources.get("GPU", 0)) == (cpus, gpus), name
