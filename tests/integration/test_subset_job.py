"""A job over a subset of its inputs (input.subset) on a real local Ray: only the subset is
labeled, a rerun resumes it, another subset in the same output is refused before work."""

import json

import pyarrow.dataset as pads
import pytest

from labeler.config import load_job_spec
from labeler.jobs.runner import run_job
from labeler.sinks.parquet import OutputConflict
from labeler.sources.subset import choose_subset
from labeler.testing.samples import make_sample_images


def _spec(folder, out, model, subset):
    return load_job_spec(None, input=str(folder), output=str(out), task="detect",
                         family="owlv2", model=model, labels=["a cat"], threshold=0.3,
                         batch_size=4, subset=subset)


def test_a_subset_job_labels_the_subset_only_and_resumes_it(ray_local, tiny_owlv2, tmp_path):
    make_sample_images(tmp_path / "in", count=20, bad=True)
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    expected = {names[k] for k in choose_subset(names, count=6)}

    spec = _spec(tmp_path / "in", tmp_path / "out", tiny_owlv2, {"count": 6})
    summary = run_job(spec, progress=False)
    assert (summary.inputs, summary.listed_inputs, summary.rows) == (6, 23, 6)
    assert summary.lines()[0].startswith(
        f"rows: 6 (6 inputs of 23 listed (subset count 6, seed 0), 0 already done), errors: "
        f"{sum(n.startswith('bad_') for n in expected)}")
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert set(table.column("id").to_pylist()) == expected
    done = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert (done["inputs"], done["listed_inputs"], done["subset"]) == (
        6, 23, "count 6, seed 0")

    again = run_job(spec, progress=False)
    assert (again.rows, again.skipped_inputs) == (0, 6)

    with pytest.raises(OutputConflict, match=r"input.subset.count: 6 there, 12 now"):
        run_job(_spec(tmp_path / "in", tmp_path / "out", tiny_owlv2, {"count": 12}),
                progress=False)
    larger = run_job(_spec(tmp_path / "in", tmp_path / "larger", tiny_owlv2, {"count": 12}),
                     progress=False)
    rows = pads.dataset(tmp_path / "larger", format="parquet").to_table()
    assert larger.rows == 12 and expected < set(rows.column("id").to_pylist())
