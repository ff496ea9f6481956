"""Shared fixtures: offline mode, tiny checkpoints built once per session, a local Ray."""

from __future__ import annotations

import os

# Set before transformers / huggingface_hub are imported anywhere: no test may download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test cluster needs no token

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def offline():
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: pin both the variable and the
    value it was read into, whatever ran before in this process."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory) -> str:
    """A tiny OWLv2 checkpoint folder (96 px input), built once per session."""
    from labeler.testing import build_tiny_model

    return str(build_tiny_model("owlv2", tmp_path_factory.mktemp("models") / "owlv2"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family) -> checkpoint folder, built on first use, once per session."""
    from labeler.testing import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = str(build_tiny_model(family, root / family))
        return built[family]

    return get


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is. With LABELER_REQUIRE_GPU=1 (the GPU run sets
    it) no CUDA is a failure: a driver problem must not pass as "skipped, needs CUDA"."""
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("LABELER_REQUIRE_GPU") == "1":
        raise pytest.UsageError("LABELER_REQUIRE_GPU=1, and torch sees no CUDA device "
                                "(torch.cuda.is_available() is False)")
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray of 2 CPUs for the whole session (starting one costs ~5 s)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
