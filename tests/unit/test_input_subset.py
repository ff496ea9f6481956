"""input.subset: a reproducible random subset of the inputs, chosen by a hash of their ids."""

import random

import pytest

from labeler.config import SpecError, load_job_spec
from labeler.sources import plan_source
from labeler.sources.subset import choose_subset, subset_key

IDS = [f"cam{c}/day{d}/{k:05d}.jpg" for c in range(4) for d in range(5) for k in range(500)]


def _chosen(ids, **kw):
    return {ids[k] for k in choose_subset(ids, **kw)}


def test_a_count_is_exact_spread_over_every_folder_and_in_listing_order():
    positions = choose_subset(IDS, count=200)
    assert len(positions) == 200 and positions == sorted(positions)
    cameras = {IDS[k].split("/")[0] for k in positions}
    days = {IDS[k].rsplit("/", 1)[0] for k in positions}
    assert cameras == {"cam0", "cam1", "cam2", "cam3"} and len(days) == 20
    assert len(choose_subset(IDS[:50], count=200)) == 50  # fewer than asked: all of them


def test_the_subset_depends_on_the_ids_not_on_how_they_are_listed():
    shuffled = random.Random(1).sample(IDS, len(IDS))
    assert _chosen(shuffled, count=300) == _chosen(IDS, count=300)
    assert _chosen(shuffled, fraction=0.02) == _chosen(IDS, fraction=0.02)
    # A fraction keeps an input whatever else is listed; a count of lowest keys as well
    # once the input is among them.
    half = IDS[::2]
    assert _chosen(half, fraction=0.02) == _chosen(IDS, fraction=0.02) & set(half)


def test_a_larger_subset_holds_the_smaller_and_a_seed_draws_another():
    small, large = _chosen(IDS, count=100), _chosen(IDS, count=1000)
    assert small < large
    assert _chosen(IDS, fraction=0.01) < _chosen(IDS, fraction=0.1)
    other = _chosen(IDS, count=100, seed=1)
    assert len(other) == 100 and len(other & small) < 20  # about 100 * 100 / 10000 = 1


def test_a_fraction_keeps_about_that_share():
    for fraction in (0.01, 0.1, 0.5):
        kept = len(choose_subset(IDS, fraction=fraction))
        expected = fraction * len(IDS)
        # Binomial: within 5 standard deviations.
        assert abs(kept - expected) < 5 * (expected * (1 - fraction)) ** 0.5
    assert len(choose_subset(IDS, fraction=1.0)) == len(IDS)


def test_keys_are_uniform_and_stable():
    # The same key on every machine and run: the subset of a job must not move between its
    # runs (its resume depends on it).
    # Pinned values: a key that changed (another hash, Python's salted hash()) moves subsets.
    assert subset_key("cam0/day0/00000.jpg", 0) == pytest.approx(0.6865093899482829, abs=1e-15)
    assert subset_key("a.jpg", 0) == pytest.approx(0.8803832362512006, abs=1e-15)
    assert subset_key("a.jpg", 1) == pytest.approx(0.08760147037230709, abs=1e-15)
    keys = [subset_key(i, 0) for i in IDS]
    assert 0 <= min(keys) and max(keys) < 1
    deciles = [sum(1 for k in keys if d / 10 <= k < (d + 1) / 10) for d in range(10)]
    assert all(abs(n - 1000) < 150 for n in deciles)


def test_one_size_must_be_given():
    with pytest.raises(ValueError, match="one of count and fraction"):
        choose_subset(IDS)
    with pytest.raises(ValueError, match="one of count and fraction"):
        choose_subset(IDS, count=3, fraction=0.1)


def _spec(folder, spec_file=None, **kw):
    return load_job_spec(spec_file, input=str(folder), output=str(folder / "out"),
                         task="detect", family="owlv2", model="m", labels=["cat"], **kw)


def test_the_spec_takes_a_count_or_a_fraction_and_names_the_field(tmp_path):
    assert _spec(tmp_path, subset={"count": 5}).input.subset.count == 5
    assert _spec(tmp_path, subset={"fraction": 0.25}).input.subset.describe() == \
        "fraction 0.25, seed 0"
    for bad, message in (({"count": 0}, "input.subset.count"),
                         ({"fraction": 1.5}, "input.subset.fraction"),
                         ({"count": 5, "fraction": 0.1}, "input.subset: give"),
                         ({}, "input.subset: give")):
        with pytest.raises(SpecError, match=message):
            _spec(tmp_path, subset=bad)


def test_the_subset_flag_keeps_the_spec_files_seed(tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("input: {path: x, subset: {fraction: 0.5, seed: 7}}\n")
    subset = _spec(tmp_path, spec_file, subset={"count": 3}).input.subset
    assert (subset.count, subset.fraction, subset.seed) == (3, None, 7)
    subset = _spec(tmp_path, spec_file, subset_seed=9).input.subset
    assert (subset.fraction, subset.seed) == (0.5, 9)


def test_planning_keeps_the_subsets_inputs_their_captions_and_numbers_shards_after(tmp_path):
    for k in range(40):
        (tmp_path / f"{k:02d}.jpg").write_bytes(b"x")
        (tmp_path / f"{k:02d}.txt").write_text(f"caption {k}")
    whole = plan_source(str(tmp_path), files_per_shard=4)
    plan = plan_source(str(tmp_path), files_per_shard=4,
                       subset=_spec(tmp_path, subset={"count": 10}).input.subset)
    ids = [i.id for i in plan.items]
    assert plan.listed == 40 and whole.listed is None
    assert len(ids) == 10 and ids == sorted(ids)
    assert set(ids) == _chosen([i.id for i in whole.items], count=10)
    assert [i.shard for i in plan.items] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [i.metadata["caption"] for i in plan.items] == [f"caption {int(i[:2])}" for i in ids]
    assert plan.metadata.column("caption").to_pylist() == [i.metadata["caption"]
                                                            for i in plan.items]


def test_a_repeated_id_is_refused_even_outside_the_subset(tmp_path):
    rows = "".join(f'{{"id": "{k}", "uri": "/x/{k}.jpg"}}\n' for k in range(30))
    (tmp_path / "m.jsonl").write_text(rows + '{"id": "3", "uri": "/x/again.jpg"}\n')
    subset = _spec(tmp_path, subset={"count": 2}).input.subset
    assert "3" not in _chosen([str(k) for k in range(30)], count=2)  # outside it
    with pytest.raises(SpecError, match="input.path: input id '3' appears twice"):
        plan_source(str(tmp_path / "m.jsonl"), 4, subset=subset)


def test_a_video_jobs_subset_is_of_videos_and_the_tars_members_count_as_inputs(tmp_path):
    import tarfile

    for k in range(12):
        (tmp_path / f"v{k:02d}.mp4").write_bytes(b"x")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for k in range(8):
            (tmp_path / f"m{k}.mp4").write_bytes(b"y")
            tar.add(tmp_path / f"m{k}.mp4", arcname=f"m{k}.mp4")
            (tmp_path / f"m{k}.mp4").unlink()
    subset = _spec(tmp_path, subset={"fraction": 0.5}).input.subset
    whole = plan_source(str(tmp_path), 4, media="video")
    captioned = next(i.id for i in whole.items
                     if i.id in _chosen([i.id for i in whole.items], fraction=0.5)
                     and not i.id.startswith("shard.tar/"))
    (tmp_path / captioned.replace(".mp4", ".txt")).write_text("a cat")
    plan = plan_source(str(tmp_path), 4, media="video", subset=subset)
    assert plan.listed == len(whole.items) == 20
    assert {i.id for i in plan.items} == _chosen([i.id for i in whole.items], fraction=0.5)
    assert any(i.id.startswith("shard.tar/") for i in plan.items)
    captions = {i.id: i.metadata.get("caption") for i in plan.items}
    assert captions[captioned] == "a cat"
    assert sum(caption is not None for caption in captions.values()) == 1


def test_a_subset_runs_summary_estimates_the_whole_input_at_its_steady_rate():
    from labeler.jobs.runner import JobSummary

    # Two tasks: 1,000 rows of 500 images, each labeled by both at 20 images/s (40 rows/s),
    # 120,000 in 6,000 s.
    summary = JobSummary(output="o", inputs=500, rows=1000, listed_inputs=120_000,
                         subset="count 500, seed 0", steady_images_per_s=20.0, tasks=["a", "b"],
                         wall_s=10.0, ray_start_s=2.0)
    lines = summary.lines()
    assert lines[1].startswith("throughput: 20.0 images/s steady")
    # Without a steady rate: rows over the tasks, per second after Ray started.
    unsteady = JobSummary(output="o", inputs=500, rows=1000, tasks=["a", "b"], wall_s=27.0,
                          ray_start_s=2.0).lines()
    assert unsteady[1].startswith("throughput: 20.0 images/s with model load")
    # A rerun with nothing left to label gives no rate at all.
    assert not any(line.startswith("throughput") for line in JobSummary(
        output="o", inputs=5, rows=0, skipped_inputs=5).lines())
    assert lines[0] == ("rows: 1000 (500 inputs of 120000 listed (subset count 500, seed 0), "
                        "0 already done), errors: 0")
    assert "all 120000 listed inputs at this rate: about 1.7 h (the same resources; add the " \
        "model load)" in lines
    # Videos: this run's frames per video. 4 videos gave 400 frames at 20 frames/s: 100,000
    # frames of 1,000 videos in 5,000 s.
    video = JobSummary(output="o", inputs=4, media="video", unit="frames", rows=400,
                       listed_inputs=1_000, subset="count 4, seed 0", steady_images_per_s=20.0)
    assert "all 1000 listed videos at this rate: about 83 min (the same resources; add the " \
        "model load)" in video.lines()
    # No estimate without a steady rate, when nothing was labeled, or without a subset.
    for quiet in (JobSummary(output="o", inputs=5, rows=5, listed_inputs=9),
                  JobSummary(output="o", inputs=5, rows=0, skipped_inputs=5, listed_inputs=9,
                             steady_images_per_s=3.0),
                  JobSummary(output="o", inputs=5, rows=5, steady_images_per_s=3.0)):
        assert not any("at this rate" in line for line in quiet.lines())


def test_summary_lists_the_most_frequent_error_reasons_first_and_counts_the_rest():
    """An error storm of many reasons: the commonest shows first (it was alphabetical, and
    1,000 unreadable files hid behind ten rarer reasons), at most ten, then one line."""
    from labeler.jobs.runner import JobSummary

    reasons = {f"corrupt image data: reason {k:03d}": 2 for k in range(200)}
    reasons["not a recognised image format"] = 1000
    summary = JobSummary(output="o", inputs=1400, rows=1400, errors=1400, error_reasons=reasons)
    lines = [line for line in summary.lines() if line.startswith("  ")]
    assert lines[0] == "  error x1000: not a recognised image format"
    assert len(lines) == 11
    assert lines[-1].startswith("  ... and 382 errors of 191 other reasons")
