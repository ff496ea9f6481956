"""A model that cannot load is refused before any work, naming the task's field: otherwise
every actor fails to start and every row becomes an error row blaming a dead worker (exit 0,
_SUCCESS written, the cause only in Ray's logs)."""

import re

import pytest

from labeler.config import SpecError, load_job_spec
from labeler.jobs.runner import run_job
from labeler.storage import model_source_problem


def test_sources_that_cannot_be_a_model_say_why(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert model_source_problem(str(model)) == (
        f"{str(model)!r} holds no config.json (a model folder's)")
    (model / "config.json").write_text("{}")
    assert model_source_problem(str(model)) is None
    assert model_source_problem(str(tmp_path / "missing")) == (
        f"no such model folder {str(tmp_path / 'missing')!r}")
    assert model_source_problem("./models/owlv2") == "no such model folder './models/owlv2'"
    # Offline (the tests' HF_HUB_OFFLINE=1), a hub id must be in the hub cache.
    assert "is not in the hub cache, and HF_HUB_OFFLINE is set" in model_source_problem(
        "google/owlv2-base-patch16-ensembl")
    assert "is neither a folder nor a hub id" in model_source_problem("not a repo id!")


def test_a_job_with_a_model_that_cannot_load_is_refused_before_any_work(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded before the check")
    for dry_run in (True, False):
        spec = load_job_spec(None, input=str(tmp_path / "images"), output=str(tmp_path / "out"),
                             task="detect", family="owlv2", labels=["cat"],
                             model=str(tmp_path / "no-such-model"))
        with pytest.raises(SpecError, match=re.escape(
                f"tasks.0.model.source: no such model folder {str(tmp_path / 'no-such-model')!r}")):
            run_job(spec, progress=False, dry_run=dry_run)
        assert not (tmp_path / "out").exists()  # nothing written, Ray never started
