"""benchmarks/gpu_throughput.py --small: the GPU benchmark's code path, tiny and on CPU.

The full-size run needs a GPU machine, which has no Ray: the benchmark and the adapters it
drives must import without Ray.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    from benchmarks import gpu_throughput
finally:
    sys.path.remove(str(ROOT))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads; beside the pipeline's decode thread on a shared
    2-core machine, two torch threads made generate several times slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_small_mode_prints_a_figure_for_every_case(capsys, one_torch_thread):
    assert gpu_throughput.main(["--small"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "command: " in out
    for case in gpu_throughput.CASES:
        result = re.search(rf"^RESULT case={re.escape(case.name)} images/s=([0-9.]+) "
                           rf"TFLOP/s=(\S+) batch=(\d+) .*input_wait=([0-9.]+)%", out,
                           re.MULTILINE)
        assert result, f"no RESULT line for {case.name}:\n{out}"
        assert float(result.group(1)) > 0 and float(result.group(2)) > 0
        # The pipeline ran at the sweep's best batch size: JPEG bytes -> decode processes ->
        # model, once with one batch at a time and once with two.
        pipelines = re.findall(rf"^case={re.escape(case.name)} pipeline batch=(\d+) "
                               r"images/s=([0-9.]+) input_wait=([0-9.]+)% "
                               r"predict_share=([0-9.]+)% decode_workers=(\d+) prefetch=\d+ "
                               r"concurrent_batches=(\d+) ", out, re.MULTILINE)
        assert [int(p[5]) for p in pipelines] == [1, 2], f"pipeline lines of {case.name}"
        for batch, speed, wait, predict, workers, _ in pipelines:
            assert batch == result.group(3) and float(speed) > 0
            # Disjoint shares of the wall time (0.1: the printed rounding).
            assert 0 <= float(wait) <= 100 and 0 <= float(predict) <= 100
            assert float(wait) + float(predict) <= 100.1
            assert int(workers) == gpu_throughput.DEFAULT_DECODE_WORKERS >= 1
        assert float(result.group(4)) == max(float(p[2]) for p in pipelines)
        assert re.search(rf"^RESULT case={re.escape(case.name)} .* pipeline_images/s="
                         rf"1:{pipelines[0][1]},2:{pipelines[1][1]} ", out, re.MULTILINE)
        assert re.search(rf"^case={re.escape(case.name)} attn=sdpa$", out, re.MULTILINE)
        for batch in gpu_throughput.SMALL_BATCH_SIZES:  # every batch size of the sweep ran
            assert re.search(rf"^case={re.escape(case.name)} batch={batch} images/s=[0-9.]+ ",
                             out, re.MULTILINE), f"{case.name} batch {batch} missing"
        flops = re.search(rf"^case={re.escape(case.name)} GFLOP/img=(\S+)", out, re.MULTILINE)
        assert flops and float(flops.group(1)) > 0
    # OWLv2 keeps about OWL_BOXES_PER_IMAGE boxes per image, not every patch.
    dets = [float(d) for d in re.findall(r"dets/img=([0-9.]+)", out)]
    assert dets and all(0 < d < 100 for d in dets)
    assert "out of GPU memory" not in out


def test_the_compile_and_cudnn_variants_run_and_say_so(capsys, one_torch_thread):
    """--compile reaches the spec (the vision tower is compiled: dynamo made a graph) and
    --sdpa cudnn runs (on CPU it has no cuDNN kernel to put first; the order is still set),
    as does --pinned no (pinning is CUDA's only); all are printed on every RESULT line, so
    variants' figures cannot be mixed up."""
    torch._dynamo.reset()
    assert gpu_throughput.main(["--small", "--cases", "owlv2-b16-960-q3", "--batch-sizes", "1",
                                "--compile", "--sdpa", "cudnn", "--pinned", "no"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^RESULT case=owlv2-b16-960-q3 images/s=[0-9.]+ .* compile=True "
                     r"sdpa=cudnn pinned=no torch_threads=[0-9]+$", out, re.MULTILINE), out
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def _feed(jpegs: list[bytes], batch: int = 3, workers: int = 2, prefetch: int = 2):
    """A DecodeFeed for a task without a cpu_transform (no weights or processor needed)."""
    from labeler.config import TaskSpec

    spec = TaskSpec(task="caption", model={"family": "qwen2_vl", "source": "unused/checkpoint"})
    return gpu_throughput.DecodeFeed(spec, jpegs, batch, workers, prefetch)


def test_feed_makes_decoded_batches_and_stops_when_the_consumer_raises():
    jpegs = gpu_throughput.encode_jpegs((64, 48))
    with pytest.raises(ValueError, match="consumer failed"):
        with _feed(jpegs) as feed:
            fed = feed.get()
            assert [(im.width, im.height) for im in fed.images] == [(64, 48)] * 3
            assert fed.stacked.shape == (3, 48, 64, 3) and fed.stacked.dtype == np.uint8
            # the rows are the stacked array's rows, not copies made beside it
            assert all(np.shares_memory(im.pixels, fed.stacked) for im in fed.images)
            processes = _processes(feed)
            raise ValueError("consumer failed")
    assert processes and not any(process.is_alive() for process in processes)


def test_a_failing_decode_worker_raises_in_the_consumer():
    with pytest.raises(RuntimeError, match="decode worker failed") as failed:
        with _feed([b"not an image"]) as feed:
            processes = _processes(feed)
            feed.get()
    assert "not a recognised image format" in str(failed.value.__cause__)
    assert not any(process.is_alive() for process in processes)


def _processes(feed) -> list:
    """The feed's decode processes (the executor starts them on the first submit)."""
    return list(feed.pool._processes.values())


class _FixedCostModel:
    """The adapter contract's run_timed with a fixed time per batch and nothing else, so
    that the consumer's share of waiting is known in advance."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run_timed(self, images, stacked=None):
        time.sleep(self.seconds)
        return [{}] * len(images), {"preprocess_ms": 0.0, "predict_ms": 1000 * self.seconds,
                                    "postprocess_ms": 0.0}


def test_input_wait_is_the_share_spent_waiting_for_decode():
    # A model that costs nothing waits for every batch: decode sets the pace.
    photos = gpu_throughput.encode_jpegs(gpu_throughput.PHOTO_SIZE)
    with _feed(photos, batch=4, workers=1) as feed:
        starved = gpu_throughput.feed_model(_FixedCostModel(0.0), feed, 0.2, 3)
    assert starved["input_wait"] > 0.9 and starved["predict_share"] == 0.0
    # A model slower than decode finds a batch ready every time: it never waits.
    thumbs = gpu_throughput.encode_jpegs((32, 24))
    with _feed(thumbs, batch=2, workers=1) as feed:
        fed = gpu_throughput.feed_model(_FixedCostModel(0.03), feed, 0.2, 3)
    assert fed["input_wait"] < 0.1 and fed["predict_share"] > 0.5  # sleep overshoots
    assert fed["batches"] >= 3 and 0 < fed["images_per_s"] <= 2 / 0.03


class _SlowModel:
    """An adapter (the real Adapter.run_timed and its device turn) whose predict takes
    `device_s` and whose postprocess takes `host_s`, sleeping (no CPU, no GIL)."""

    def __new__(cls, device_s: float, host_s: float):
        from labeler.config import TaskSpec
        from labeler.models.base import Adapter

        class Slow(Adapter):
            def setup(self, device):
                pass

            def preprocess(self, images, stacked=None):
                return images

            def predict(self, inputs):
                time.sleep(device_s)
                return inputs

            def postprocess(self, raw, images):
                time.sleep(host_s)
                return [{}] * len(images)

        return Slow(TaskSpec(task="caption", model={"family": "florence2", "source": "m"}))


def test_two_batches_at_once_overlap_postprocess_with_the_next_predict():
    """The pipeline's consumers share the adapter as a job's threaded actor does: with one,
    a batch costs predict + postprocess; with two, about the longer of the two."""
    thumbs = gpu_throughput.encode_jpegs((32, 24))
    figures = {}
    for consumers in (1, 2):
        with _feed(thumbs, batch=2, workers=1, prefetch=4) as feed:
            figures[consumers] = gpu_throughput.feed_model(_SlowModel(0.04, 0.04), feed, 0.6, 6,
                                                           consumers)
    one, two = figures[1], figures[2]
    assert one["images_per_s"] <= 2 / 0.08 and one["predict_share"] < 0.55
    assert two["images_per_s"] > 1.5 * one["images_per_s"]  # 2x less what sleep overshoots
    assert 0.7 < two["predict_share"] <= 1.0  # the device turn keeps predicts apart
    assert two["input_wait"] < 0.1


def test_benchmark_and_adapters_import_without_ray():
    code = ("import sys; import benchmarks.gpu_throughput, labeler.registry, labeler.models.owlv2, "
            "labeler.models.florence2, labeler.models.qwen2_vl, labeler.testing; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'ray'); "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # a cold import of torch + transformers takes seconds
    assert done.returncode == 0, done.stderr[-3000:]


def test_flop_count_is_the_same_for_fused_and_unfused_attention(tiny_owlv2):
    """TFLOP/s divides by counted FLOPs: the fused attention SDPA runs on CPU must count what
    the unfused matmuls count (torch's counter alone leaves it out)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Owlv2ForObjectDetection

    from labeler.config import TaskSpec
    from labeler.registry import load_adapter_class

    spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=["a cat", "a dog"])
    fused, eager = (load_adapter_class("detect", "owlv2")(spec) for _ in range(2))
    for adapter in (fused, eager):
        adapter.setup(torch.device("cpu"))
    eager.model = Owlv2ForObjectDetection.from_pretrained(
        tiny_owlv2, attn_implementation="eager").eval()
    images = gpu_throughput.sample_images((64, 48), 1)
    fused_flops, _ = gpu_throughput.count_flops(fused, images)
    eager_flops, _ = gpu_throughput.count_flops(eager, images)
    assert fused_flops == eager_flops
    with torch.inference_mode():
        inputs = fused.model_inputs(images)
        plain = FlopCounterMode(display=False)
        with plain:
            fused.predict(inputs)
    assert plain.get_total_flops() < fused_flops  # the attention the mapping adds is really there


def test_the_examples_benchmark_prints_each_mode(capsys, one_torch_thread):
    """benchmarks/owlv2_examples.py --small: drawn examples against a query image."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import owlv2_examples
    finally:
        sys.path.remove(str(ROOT))
    assert owlv2_examples.main(["--small", "--batch", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for mode in owlv2_examples.MODES:
        assert re.search(rf"{mode} +predict +[\d.]+ ms/image", out), mode


@pytest.mark.parametrize("flag", ["--decode-workers", "--prefetch", "--concurrent-batches",
                                  "--torch-threads"])
def test_a_count_below_one_is_refused_before_anything_is_built(flag):
    with pytest.raises(SystemExit, match="must be at least 1"):
        gpu_throughput.main(["--small", flag, "0"])
