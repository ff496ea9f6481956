"""GPU throughput at full size (issue 8): OWLv2, Florence-2 and Qwen2-VL through the adapters.

What runs. Each case builds a FULL-SIZE architecture from its transformers config class with
random weights (nothing is downloaded), saves it with `save_pretrained` into a temporary
folder beside the processor of the family's tiny checkpoint (`labeler.testing`), and drives
the project's own adapter on that folder exactly as a GPU actor does:
`load_adapter_class(task, family)(TaskSpec(..., resources={"num_gpus": 1}))`, `setup(device)`,
then per batch `run_timed` = `model_inputs` (OWLv2 preprocessing runs on the device) ->
`predict` -> `postprocess`, in bf16 on CUDA (dtype "auto"). Batch sizes are swept; a batch
that does not fit in GPU memory ends that case's sweep.

    owlv2-b16-960-q{3,300}   OWLv2 B/16, 960x960 input, 3 or 300 text queries (detect)
    owlv2-l14-1008-q{3,300}  OWLv2 L/14, 1008x1008 input, 3 or 300 text queries (detect)
    florence2-base/-large    Florence-2 `<CAPTION>`, exactly 30 new tokens
    qwen2-vl-2b              Qwen2-VL-2B sized, 448x448 images, caption, exactly 60 new tokens
    tiled-owlv2-b16-2x2      OWLv2 B/16, 3 queries, 1920x1080 frames as 2x2 tiles and the
                             whole frame (spec.tiles): 5 model inputs an image (`--cases
                             owlv2` leaves it out)

What differs from the real checkpoints, and why the compute is the same:
- weights are random: every matmul, attention and generate step has the same shapes; only
  the values (hence the text and the boxes) differ;
- the tokenizer is the tiny checkpoint's (a few hundred to ~1,400 ids) while the config keeps
  the real vocabulary (49,408 / 51,289 / 151,936), so the embedding tables and the LM heads,
  a large share of each decoding step, are real-sized. Ids the tokenizer lacks decode to
  nothing (tokenizers skip unknown ids), so the decoded text is shorter; that changes only
  the string work of postprocess, not the model's compute;
- generation is forced to the fixed length the issue asks for: `min_new_tokens =
  max_new_tokens` (set on the model's generation_config after setup; the end token is masked
  until then), and the benchmark checks that every row got exactly that many tokens;
- OWLv2 keeps the boxes whose score passes a threshold; random weights score almost every
  box alike, so the threshold is set per case (over its distinct scenes) to keep about
  `OWL_BOXES_PER_IMAGE` boxes an image, as a trained model at its usual threshold keeps
  tens. The mean kept per image is printed (dets/img). The class head's logit shift and
  scale are fixed (`spread_scores`): random weights' logits round every bf16 score to 1.0
  otherwise;
- OWLv2's box head is set to predict each patch's prior box (`prior_boxes`): random weights
  give boxes of no size, which are dropped, so nothing would be left to postprocess;
- the inputs are synthetic images (`labeler.testing.samples`), 640x480 for OWLv2 and
  Florence-2 (a typical photo), 448x448 for Qwen2-VL (the issue's size; its dynamic
  resolution keeps it: 16x16 cells of 28 px = 256 image tokens).

Figures printed per batch size (the sweep; in-memory arrays, `run_timed(...,
transformed=False)` in a loop): images/s end to end (preprocess on the device, predict,
postprocess), achieved TFLOP/s = FLOPs per image x images/s, peak GPU memory
(torch.cuda.max_memory_allocated, weights included), the per-image stage times of
`run_timed`, the batch size. FLOPs per image are COUNTED, not derived: torch.utils.flop_counter
.FlopCounterMode over one `adapter.predict` at batch 1 (matmuls, convolutions and fused
attention, 2 FLOPs per multiply-add); for the generative cases that is the whole generate
(prefill plus every decoding step). `attn=` names the attention implementation the loaded
model runs (its config's `_attn_implementation`, and each sub-config's where they differ):
"sdpa" is torch's fused scaled_dot_product_attention (flash / memory-efficient kernels on
CUDA), "eager" the unfused matmul-softmax-matmul.

Pipeline (input wait). At the sweep's best batch size each case is run again as the batch
job feeds a model actor: the inputs are JPEG bytes (the synthetic scenes encoded once,
quality 90, as files read from storage would be); `--decode-workers` processes (default one
per core but one, at most 15) do what the job's decode tasks do, `decode_image` with the
job's default `max_pixels` / `decode_min_side`, then the task's `cpu_transform` through
`labeler.jobs.stages.TaskTransforms` into the column the actor reads, and make whole batches
(one array when the rows' shapes agree, as Ray Data hands them over), at most `--prefetch`
ready ahead of the consumer; the consumer, the "actor", runs `run_timed(batch, stacked)` (the
images already transformed) for at least `--min-seconds` and PIPELINE_MIN_BATCHES batches.
Printed: images/s; `input_wait`, the share of the consumer's wall time spent blocked on the
queue, i.e. the model idle for want of input (issue 8: at most 10%); `predict_share`, the
share in predict (the GPU busy; the rest is preprocess and postprocess on the actor);
`decode_busy`, the share of the workers' time spent decoding the batches handed over
(near 100%: decode is the bottleneck). The clock starts when the first batch arrives
(filling the pipeline happens once a job), and restarts when the consumer finds no batch
ready while it still eats the batches made during the fill, so those do not hide a decode
shortfall.
What it is not: Ray. A process pool emulates Ray Data's decode tasks (worker processes);
batches come back pickled through a pipe, a copy Ray's shared-memory object store would
spare the actor, so the figure errs on the slow side there. (Threads, as the first GPU run
had, held the GIL against the actor: docs/benchmarks.md.) On the other side, the
synthetic scenes are smooth: ~15 KB per 640x480 JPEG where a photo takes 100-200 KB, and a
noisy 124 KB one decoded 2.2x slower here (2.2 vs 1.0 ms); read `decode_busy` with that
margin. Object-store copies, task scheduling and reading from storage are not emulated.
The pipeline runs once per `--concurrent-batches` value (default 1 and 2): that many
consumer threads share the actor's adapter, as a job's actor with resources.concurrent_batches
runs that many batches at once; Adapter.device_turn lets one at a time preprocess and
predict, so one batch's postprocess (and a job's row building) overlaps the next one's model
time. With several, `input_wait` is the share of time in which every consumer waited.
Each case ends with a `RESULT` line: the sweep's best batch, the largest input_wait of its
pipeline runs, and `pipeline_images/s=<concurrent batches>:<images/s>,...`.

`--small` runs the same code at tiny size on CPU in seconds (for CI): the tiny checkpoints'
own configs (generative vocabularies widened by `SMALL_EXTRA_VOCAB` ids so the
"ids beyond the tokenizer" path runs too), their processors unchanged, batch sizes 1 and 2.
Without CUDA the benchmark runs `--small` unless `--full-on-cpu` asks for the full-size
models on CPU (float32, batch 1, minutes per case): it checks the full-size configs, the
adapters on them and the FLOP counts without a GPU; its speeds say nothing about a GPU.

    PYTHONPATH=. python3 benchmarks/gpu_throughput.py                  # all cases, full size
    PYTHONPATH=. python3 benchmarks/gpu_throughput.py --cases owlv2-b16 --batch-sizes 32 64
    .venv/bin/python benchmarks/gpu_throughput.py --small               # CPU, tiny, seconds
    .venv/bin/python benchmarks/gpu_throughput.py --full-on-cpu --cases owlv2-b16-960-q3
    PYTHONPATH=. python3 benchmarks/gpu_throughput.py --cases qwen2 --decode-workers 4 --prefetch 2
    PYTHONPATH=. python3 benchmarks/gpu_throughput.py --cases owlv2-b16-960-q3 --compile \
        --sdpa cudnn

Variants: `--compile` sets the spec's model.compile (OWLv2's and Florence-2's vision towers
through torch.compile; the generative models' decoding step, with a static KV cache, which
transformers compiles on CUDA; each batch size's warm-up batch compiles, outside the timing);
`--sdpa cudnn` puts cuDNN's fused attention first in SDPA's order for the whole run;
`--pinned no` turns off the staging of pixels in pinned memory (labeler/models/staging.py),
to measure what it gains. All are printed on the `options:` line and on every RESULT line.

It imports neither Ray nor anything Ray needs (the GPU machine has no Ray).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import io
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from labeler.config import InputSpec, ResourceSpec, TaskSpec, decode_side_for_tasks  # noqa: E402
from labeler.jobs.stages import TaskTransforms, input_column  # noqa: E402
from labeler.media.image import decode_image  # noqa: E402
from labeler.models.base import ImageInput, attention_implementations  # noqa: E402
from labeler.registry import load_adapter_class  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.samples import synthetic_image  # noqa: E402

FULL_BATCH_SIZES = (1, 8, 32, 64, 128)
# The generative cases still gained from 64 to 128 on the second H200 run (Qwen2-VL 26.5 to
# 41.3 captions/s at 10.4 GiB, Florence-2 base 143 to 163): larger batches, fewer small ones
# (batch 1 and 8 were recorded on the first run). A batch that does not fit ends the sweep.
GENERATIVE_BATCH_SIZES = (32, 64, 128, 256, 512)
SMALL_BATCH_SIZES = (1, 2)
# --full-on-cpu: one image at a time; a full-size forward pass takes seconds to minutes there.
CPU_FULL_BATCH_SIZES = (1,)
# A trained OWLv2 at its usual threshold (0.1) keeps tens of boxes on a busy photo.
OWL_BOXES_PER_IMAGE = 25
# Extra vocabulary ids of the --small generative models, beyond their tokenizers: enough that
# random weights emit some, so decoding ids the tokenizer lacks is exercised in CI.
SMALL_EXTRA_VOCAB = 4096
# Distinct synthetic images per case, repeated to fill a batch: preprocessing costs the same
# for every image of a size, and making 128 distinct ones would only slow the start.
DISTINCT_IMAGES = 8
PHOTO_SIZE = (640, 480)  # width, height of the OWLv2 and Florence-2 inputs (a typical photo)
# --small: images no larger than this on their long side (see main).
SMALL_LONG_SIDE = 640
QWEN_SIZE = (448, 448)  # the Qwen2-VL input; a multiple of 28 px, kept as is
FRAME_SIZE = (1920, 1080)  # the tiled case: a 1080p frame (drone video, a CCTV camera)

# --- the pipeline run (input wait) ---------------------------------------------------------
JPEG_QUALITY = 90  # a common export quality of cameras and photo sites
# One core for the actor's own thread, the others decode; 15 = a 16-core GPU machine's rest.
DEFAULT_DECODE_WORKERS = max(1, min((os.cpu_count() or 2) - 1, 15))
# Batches ready ahead of the actor. Ray Data 2.60 submits 2 tasks (each a batch) per actor
# (max_concurrency x its factor 2; 4 with concurrent_batches 2) and keeps finished decode
# blocks queued before the pool besides: "a few"; 4 stands for both.
DEFAULT_PREFETCH = 4
# Batches timed in the pipeline run at least: two waits between batches, not one.
PIPELINE_MIN_BATCHES = 3
# The job's decode defaults: the decompression-bomb guard, and the reduced JPEG decode.
MAX_PIXELS = InputSpec.model_fields["max_pixels"].default
DECODE_MIN_SIDE = InputSpec.model_fields["decode_min_side"].default

# --- full-size architectures (the released checkpoints' config.json values) ---------------

OWL_B16 = dict(  # google/owlv2-base-patch16-ensemble, input 960
    text=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
              num_attention_heads=8),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, patch_size=16, image_size=960),
    projection_dim=512)
OWL_L14 = dict(  # google/owlv2-large-patch14-ensemble, input 1008
    text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12),
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, patch_size=14, image_size=1008),
    projection_dim=768)
FLORENCE_IMAGE = 768  # both Florence-2 sizes take 768x768
FLORENCE_BASE = dict(  # microsoft/Florence-2-base: DaViT + BART-base
    vision=dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                num_groups=[4, 8, 16, 32], depths=[1, 1, 9, 1], projection_dim=768),
    text=dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
              decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072))
FLORENCE_LARGE = dict(  # microsoft/Florence-2-large: wider DaViT + BART-large
    vision=dict(embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                num_groups=[8, 16, 32, 64], depths=[1, 1, 9, 1], projection_dim=1024),
    text=dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
              decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096))
FLORENCE_VOCAB = 51289  # the released tokenizer: BART's 50,265 + 1,024 Florence tokens
# The released DaViT's stem and three downsamplings; the tiny model uses the first two.
FLORENCE_STRIDES = [4, 2, 2, 2]
QWEN_2B = dict(  # Qwen/Qwen2-VL-2B-Instruct
    text=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
              num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
              # head_dim 128: its 64 rotary frequencies split over (t, h, w) as released.
              rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                               "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2))
# The released Qwen2-VL processor's pixel bounds (56x56 .. 28*28*16384).
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 3136, 12845056


@dataclass(frozen=True)
class Build:
    """One model folder: a config (full or small) from the tiny checkpoint `tiny` (its token
    ids, its processor), the transformers class that builds it, and `full_processor`, which
    sets the processor's geometry for the full-size model."""

    family: str
    model_class: str
    full_config: Callable[[object], object]  # tiny config -> full-size config
    full_processor: Callable[[object, object], None]  # (processor, full config) -> None


@dataclass(frozen=True)
class Case:
    """One measured configuration of a Build."""

    name: str
    build: str
    task: str
    image_size: tuple[int, int]
    labels: tuple[str, ...] = ()
    new_tokens: int | None = None  # exact generated length (generative cases)
    tiles: tuple[int, int] | None = None  # spec.tiles grid (OWLv2 detect)


def _owl_config(sizes: dict) -> Callable[[object], object]:
    def make(tiny):
        from transformers import Owlv2Config

        t = tiny.text_config
        text = dict(sizes["text"], max_position_embeddings=t.max_position_embeddings,
                    bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                    pad_token_id=t.pad_token_id)
        return Owlv2Config(text_config=text, vision_config=sizes["vision"],
                           projection_dim=sizes["projection_dim"])
    return make


def _owl_processor(processor, config) -> None:
    side = config.vision_config.image_size
    processor.image_processor.size = {"height": side, "width": side}


def _florence_config(sizes: dict) -> Callable[[object], object]:
    def make(tiny):
        from transformers import Florence2Config

        t = tiny.text_config
        text = dict(sizes["text"], model_type="bart", vocab_size=FLORENCE_VOCAB,
                    max_position_embeddings=t.max_position_embeddings,
                    bos_token_id=t.bos_token_id, pad_token_id=t.pad_token_id,
                    eos_token_id=t.eos_token_id, decoder_start_token_id=t.decoder_start_token_id)
        return Florence2Config(vision_config=sizes["vision"], text_config=text,
                               image_token_id=tiny.image_token_id)
    return make


def _florence_processor(processor, config) -> None:
    ip = processor.image_processor
    ip.size = ip.crop_size = {"height": FLORENCE_IMAGE, "width": FLORENCE_IMAGE}
    # One <image> placeholder per cell of the last DaViT stage plus one pooled token.
    grid = FLORENCE_IMAGE // int(np.prod(config.vision_config.patch_stride))
    ip.image_seq_length = grid * grid + 1


def _qwen_config(tiny):
    from transformers import Qwen2VLConfig

    t = tiny.text_config
    text = dict(QWEN_2B["text"], bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                pad_token_id=t.pad_token_id)
    return Qwen2VLConfig(
        text_config=text, vision_config=QWEN_2B["vision"], tie_word_embeddings=True,
        image_token_id=tiny.image_token_id, video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id)


def _qwen_processor(processor, config) -> None:
    processor.image_processor.size = {"shortest_edge": QWEN_MIN_PIXELS,
                                      "longest_edge": QWEN_MAX_PIXELS}


BUILDS = {
    "owlv2-b16": Build("owlv2", "Owlv2ForObjectDetection", _owl_config(OWL_B16), _owl_processor),
    "owlv2-l14": Build("owlv2", "Owlv2ForObjectDetection", _owl_config(OWL_L14), _owl_processor),
    "florence2-base": Build("florence2", "Florence2ForConditionalGeneration",
                            _florence_config(FLORENCE_BASE), _florence_processor),
    "florence2-large": Build("florence2", "Florence2ForConditionalGeneration",
                             _florence_config(FLORENCE_LARGE), _florence_processor),
    "qwen2-vl-2b": Build("qwen2_vl", "Qwen2VLForConditionalGeneration", _qwen_config,
                         _qwen_processor),
}

# 300 distinct queries of three words: 15 attributes x 20 objects. The text tower runs once,
# in setup, on queries padded to 16 tokens; per image only their count matters (the class
# head is patches x queries). Short enough that the tiny tokenizer's pieces fit in 16 tokens.
_ATTRIBUTES = ("red green blue black white yellow orange pink brown grey purple small large "
               "old new").split()
_OBJECTS = ("cat dog car person bicycle bus truck boat bird horse sheep cow bottle chair table "
            "cup phone book clock tree").split()
MANY_QUERIES = tuple(f"a {a} {o}" for a in _ATTRIBUTES for o in _OBJECTS)
FEW_QUERIES = ("a photo of a cat", "a photo of a dog", "a car")

CASES = (
    Case("owlv2-b16-960-q3", "owlv2-b16", "detect", PHOTO_SIZE, labels=FEW_QUERIES),
    Case("owlv2-b16-960-q300", "owlv2-b16", "detect", PHOTO_SIZE, labels=MANY_QUERIES),
    Case("owlv2-l14-1008-q3", "owlv2-l14", "detect", PHOTO_SIZE, labels=FEW_QUERIES),
    Case("owlv2-l14-1008-q300", "owlv2-l14", "detect", PHOTO_SIZE, labels=MANY_QUERIES),
    Case("florence2-base-caption", "florence2-base", "caption", PHOTO_SIZE, new_tokens=30),
    Case("florence2-large-caption", "florence2-large", "caption", PHOTO_SIZE, new_tokens=30),
    Case("qwen2-vl-2b-caption", "qwen2-vl-2b", "caption", QWEN_SIZE, new_tokens=60),
    # Named apart from "owlv2": `--cases owlv2` keeps to the cases.
    Case("tiled-owlv2-b16-2x2", "owlv2-b16", "detect", FRAME_SIZE, labels=FEW_QUERIES,
         tiles=(2, 2)),
)

CASE_NAMES = frozenset(c.name for c in CASES)


def prior_boxes(model) -> None:
    """Zero the output layer of OWLv2's box head, so every patch predicts its prior box (the
    model's box_bias: its own grid cell, a cell wide). Random weights saturate that layer:
    widths and heights underflow to 0, and boxes without area are dropped, which would leave
    no box to postprocess. Same shapes, same compute: only values change, as with a trained
    model, whose boxes have real sizes."""
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()


# The class head's logit scale set by spread_scores: cosines of random embeddings (about
# +-0.1) become logits of about +-2, scores spread around 0.5.
OWL_LOGIT_SCALE = 20.0


def spread_scores(model) -> None:
    """Fix the class head's per-patch logit shift at 0 and its scale at OWL_LOGIT_SCALE, so
    scores spread below 1. Random weights give logits in the hundreds: every sigmoid rounds
    to 1.0 (seen in bf16 on an H200), no threshold keeps OWL_BOXES_PER_IMAGE boxes, and
    postprocess would run on none. Same shapes and compute, as prior_boxes."""
    head = model.class_head
    with torch.no_grad():
        for layer in (head.logit_shift, head.logit_scale):
            layer.weight.zero_()
            layer.bias.zero_()
        head.logit_scale.bias.fill_(OWL_LOGIT_SCALE - 1.0)  # elu(b) + 1 = b + 1 for b > 0


def build_model_folder(build: Build, tiny_dir: Path, out_dir: Path, device: torch.device,
                       dtype: torch.dtype, small: bool) -> Path:
    """Random-weight model of `build` (full size, or the tiny config with SMALL_EXTRA_VOCAB
    more ids when `small`; OWLv2 with prior_boxes) plus the tiny processor, saved into
    `out_dir` for setup()."""
    import transformers
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    tiny = AutoConfig.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model_class = getattr(transformers, build.model_class)
    if small:
        config = tiny
        if build.family != "owlv2":  # OWLv2 generates nothing: its vocabulary is a lookup
            config.text_config.vocab_size += SMALL_EXTRA_VOCAB
    else:
        config = build.full_config(tiny)
        build.full_processor(processor, config)
    with torch.device(device):  # random init where it runs: seconds for 2B parameters on a GPU
        model = model_class(config).to(dtype).eval()
    if build.family != "owlv2":
        model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    else:
        prior_boxes(model)
        spread_scores(model)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    return out_dir


def small_size(size: tuple[int, int]) -> tuple[int, int]:
    """An image size for --small: as it is, or scaled to a long side of SMALL_LONG_SIDE."""
    scale = SMALL_LONG_SIDE / max(size)
    return size if scale >= 1 else (round(size[0] * scale), round(size[1] * scale))


def make_spec(case: Case, build: Build, folder: Path, threshold: float = 0.1,
              compile_model: bool = False) -> TaskSpec:
    """The TaskSpec a GPU actor of this case would get (num_gpus=1: device preprocessing);
    compile_model: the spec's model.compile."""
    spec = {"task": case.task, "model": {"family": build.family, "source": str(folder),
                                         "dtype": "auto", "compile": compile_model},
            "labels": list(case.labels), "threshold": threshold,
            "resources": {"num_gpus": 1}}
    if case.new_tokens:
        spec["generation"] = {"max_new_tokens": case.new_tokens}
    if case.tiles:
        spec["tiles"] = {"grid": list(case.tiles)}
    return TaskSpec(**spec)


def sample_images(size: tuple[int, int], count: int) -> list[ImageInput]:
    """`count` ImageInputs of `size` (w, h), cycling DISTINCT_IMAGES synthetic scenes."""
    w, h = size
    pool = [np.asarray(synthetic_image(w, h, seed)) for seed in range(DISTINCT_IMAGES)]
    return [ImageInput(pixels=pool[i % len(pool)], width=w, height=h) for i in range(count)]


def generated_lengths(case: Case, raw) -> set[int]:
    """The number of new tokens of each row of a generative predict() output."""
    if isinstance(raw, dict):  # Florence-2: sequences start with the decoder start token
        return {raw["sequences"].shape[1] - 1}
    return {raw.shape[1]}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one fused attention call, (B, H, S, D) operands. Grouped-query attention
    (Qwen2-VL's text model: 12 query heads, 2 key/value heads, SDPA's enable_gqa) does the
    work of a key and value per query head, so those are counted at the query's head count
    (torch's own formula refuses such shapes)."""
    heads = query_shape[1]
    key_shape = (key_shape[0], heads, *key_shape[2:])
    value_shape = (value_shape[0], heads, *value_shape[2:])
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode (torch 2.14) has formulas for the CUDA fused attention kernels but not for
# the one SDPA dispatches to on CPU (--small, --full-on-cpu), whose FLOPs it would leave out:
# 42% of OWLv2 B/16@960's 1.1 TFLOP per image. Its formulas also refuse grouped-query shapes
# (seen on an H200 with Qwen2-VL: "query/key/value shapes are incompatible").
SDPA_FLOPS = {op: _sdpa_flops for op in (
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention,
    torch.ops.aten._scaled_dot_product_efficient_attention,
    torch.ops.aten._scaled_dot_product_cudnn_attention)}


def count_flops(adapter, images: list[ImageInput]):
    """(FLOPs of one adapter.predict on `images`, its output), by FlopCounterMode."""
    # force_eager: a compiled model (model.compile) runs its Python here, whose operations
    # the counter sees; compiled kernels would hide them.
    with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
        inputs = adapter.model_inputs(images)
        counter = FlopCounterMode(display=False, custom_mapping=SDPA_FLOPS)
        with counter:
            raw = adapter.predict(inputs)
    return counter.get_total_flops(), raw


def owl_threshold(adapter, images: list[ImageInput]) -> float:
    """A threshold that keeps OWL_BOXES_PER_IMAGE boxes an image on average over `images`
    (the case's distinct scenes): between the (OWL_BOXES_PER_IMAGE x len(images))-th best
    score of the boxes the adapter gives them at threshold 0 and the next (boxes in the
    image: those wholly in the padding are dropped; merged, when tiled). Calibrated on one
    scene, the second H200 run kept 23 boxes of it and 426 an image of the others, whose
    postprocess (and a tiled frame's merge, 160 ms) then measured nothing a real job does."""
    everything = adapter.with_spec(adapter.spec.model_copy(update={"threshold": 0.0}))
    scores = sorted((d["score"] for out in everything(images) for d in out["detections"]),
                    reverse=True)
    top = scores[:OWL_BOXES_PER_IMAGE * len(images) + 1]
    return (top[-2] + top[-1]) / 2 if len(top) > 1 else 0.0


def sweep(case: Case, adapter, batch_sizes, device: torch.device, flops: float,
          min_seconds: float, min_iters: int) -> list[dict]:
    """Images/s, TFLOP/s, peak memory and stage times per batch size; printed as it goes."""
    rows = []
    for batch in batch_sizes:
        images = sample_images(case.image_size, batch)
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            outputs, _ = adapter.run_timed(images, transformed=False)  # warm-up
            stage = {"preprocess_ms": 0.0, "predict_ms": 0.0, "postprocess_ms": 0.0}
            iters, start = 0, time.perf_counter()
            while iters < min_iters or time.perf_counter() - start < min_seconds:
                outputs, times = adapter.run_timed(images, transformed=False)
                stage = {k: stage[k] + v for k, v in times.items()}
                iters += 1
            elapsed = time.perf_counter() - start
        except torch.OutOfMemoryError:
            print(f"case={case.name} batch={batch} out of GPU memory: sweep ends", flush=True)
            break
        assert len(outputs) == batch, "postprocess must return one result per image"
        row = {"batch": batch, "images_per_s": batch * iters / elapsed,
               "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else float("nan")),
               **{k: v / iters for k, v in stage.items()}}
        row["tflops"] = flops * row["images_per_s"] / 1e12
        extra = ""
        if case.task == "detect":
            extra = f" dets/img={np.mean([len(o['detections']) for o in outputs]):.1f}"
        print(f"case={case.name} batch={batch} images/s={row['images_per_s']:.2f} "
              f"TFLOP/s={row['tflops']:.4g} peak_mem_GiB={row['peak_gib']:.2f} "
              f"ms/img pre={row['preprocess_ms']:.2f} predict={row['predict_ms']:.2f} "
              f"post={row['postprocess_ms']:.2f} iters={iters}{extra}", flush=True)
        rows.append(row)
    return rows


def describe_attention(config) -> str:
    """The one implementation all configs use ("sdpa"), else each config's
    ("model=sdpa,model.text_config=eager,...")."""
    found = attention_implementations(config)
    if len(set(found.values())) == 1:
        return str(next(iter(found.values())))
    return ",".join(f"{path}={impl}" for path, impl in found.items())


def encode_jpegs(size: tuple[int, int]) -> list[bytes]:
    """DISTINCT_IMAGES synthetic scenes of `size` (w, h) as JPEG bytes (JPEG_QUALITY)."""
    encoded = []
    for seed in range(DISTINCT_IMAGES):
        buffer = io.BytesIO()
        synthetic_image(*size, seed).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        encoded.append(buffer.getvalue())
    return encoded


@dataclass(frozen=True)
class FedBatch:
    """One batch as the actor gets it: its ImageInputs, and their pixels as one (B, ...)
    array when every row has the same shape (None otherwise)."""

    images: list[ImageInput]
    stacked: np.ndarray | None

    def __reduce__(self):
        # Pickled (from a decode process): the stacked pixels once, not once more per row.
        if self.stacked is None:
            return FedBatch, (self.images, None)
        return _rows_of, (self.stacked, [(im.width, im.height) for im in self.images])


# --- decode worker processes (the job's decode tasks) --------------------------------------
_worker: dict = {}  # in each decode process: the task's transforms, column and decode side


def _start_decode_worker(spec: TaskSpec, jpegs: list[bytes]) -> None:
    """Decode process initializer: the task's cpu_transform, as a job's decode task has it."""
    _worker.update(transforms=TaskTransforms([spec]), column=input_column(spec),
                   decode_side=decode_side_for_tasks(DECODE_MIN_SIDE, [spec]), jpegs=jpegs)


def _decode_batch(number: int, batch: int) -> tuple[FedBatch, float]:
    """Batch `number`: `batch` JPEGs decoded and transformed in this process -> the batch
    and the seconds that took. When the rows' shapes agree, only the stacked array and the
    sizes cross the pipe (FedBatch.__reduce__): the rows are views into it."""
    jpegs, clock = _worker["jpegs"], time.perf_counter
    start = clock()
    images = []
    for k in range(number * batch, (number + 1) * batch):
        decoded = decode_image(jpegs[k % len(jpegs)], MAX_PIXELS, _worker["decode_side"])
        pixels = _worker["transforms"].apply(decoded.pixels)[_worker["column"]]
        images.append(ImageInput(pixels, decoded.width, decoded.height))
    stacked = np.stack([im.pixels for im in images]) if len(
        {im.pixels.shape for im in images}) == 1 else None
    return FedBatch(images, stacked), clock() - start


def _rows_of(stacked: np.ndarray, sizes: list[tuple[int, int]]) -> FedBatch:
    """A FedBatch whose rows are views into `stacked`, one per (width, height)."""
    return FedBatch([ImageInput(pixels, w, h) for pixels, (w, h) in zip(stacked, sizes)],
                    stacked)


class DecodeFeed:
    """`workers` processes that decode JPEG bytes into whole batches of `batch` ImageInputs,
    as the job's decode tasks make rows (labeler.jobs.stages.decode_batch, each in a Ray
    worker process) and the actor reads them (labeler.actors.predictor). Batches are made in
    order, at most `workers + prefetch` ahead of the consumer: one being made per process
    and `prefetch` made and waiting, as Ray Data keeps blocks queued for an actor.

    Processes, not threads: threads' Python (decode_image, cpu_transform) would hold the GIL
    against the consumer's, which a job's separate processes do not (measured on an H200:
    with threads, OWLv2 B/16 ran at 115 images/s fed against 277 in the sweep, without ever
    waiting for input). Batches come back pickled through a pipe, a copy that Ray's shared
    object store would spare the actor: the figure errs on the slow side there.

    A context manager: leaving it cancels what is queued and shuts the processes down,
    however it is left. `get` raises a worker's exception in the caller's thread.
    """

    def __init__(self, spec: TaskSpec, jpegs: list[bytes], batch: int, workers: int,
                 prefetch: int):
        self.spec, self.jpegs, self.batch, self.workers = spec, jpegs, batch, workers
        self.ahead = workers + prefetch
        self.pool: ProcessPoolExecutor | None = None
        self.pending: collections.deque[Future] = collections.deque()
        self.next_number = 0
        self.decode_s = 0.0  # seconds in decode + cpu_transform, over the batches handed over
        self.decoded = 0  # images handed over
        self.started = 0.0
        self.taking = threading.Lock()  # get, from several consumer threads

    def __enter__(self) -> "DecodeFeed":
        # spawn: the consumer may have CUDA initialised, which a forked child must not touch.
        self.pool = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_decode_worker, initargs=(self.spec, self.jpegs))
        self.started = time.perf_counter()
        for _ in range(self.ahead):
            self._submit()
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self) -> None:
        self.pending.append(self.pool.submit(_decode_batch, self.next_number, self.batch))
        self.next_number += 1

    def empty(self) -> bool:
        """Whether the next batch is not ready now (the consumer would wait)."""
        return not self.pending[0].done()

    def get(self) -> FedBatch:
        """The next batch, waiting for it; RuntimeError (from the worker's exception) when
        a worker failed. Consumer threads take batches in order, one at a time."""
        with self.taking:
            future = self.pending.popleft()
            try:
                fed, seconds = future.result()
            except Exception as err:
                raise RuntimeError("a decode worker failed") from err
            self._submit()
            self.decode_s += seconds
            self.decoded += len(fed.images)
        return fed

    def restart_counts(self) -> None:
        """Count busy_share and ms_per_image from now (the next run on this feed)."""
        with self.taking:
            self.decode_s, self.decoded, self.started = 0.0, 0, time.perf_counter()

    def busy_share(self) -> float:
        """Share of the workers' time since the start spent decoding the batches handed
        over (0-1)."""
        return self.decode_s / (self.workers * (time.perf_counter() - self.started))

    def ms_per_image(self) -> float:
        """Mean decode + cpu_transform time of one image in one process, ms."""
        return 1000.0 * self.decode_s / max(1, self.decoded)


class _FeedClock:
    """What feed_model's consumer threads measure together, under one lock: the timed
    stretch's start, the images and batches done since, the time in predict, and the time
    in which every consumer was blocked on the queue (the model idle for want of input)."""

    def __init__(self, consumers: int):
        self.lock = threading.Lock()
        self.consumers = consumers
        self.start: float | None = None  # when the first batch arrived
        self.first_batch_s = 0.0
        self.images = self.batches = self.taken = self.waiting = self.detections = 0
        self.predict_s = self.idle_s = 0.0
        self.stage_s = {"preprocess_ms": 0.0, "predict_ms": 0.0, "postprocess_ms": 0.0}
        self.idle_since: float | None = None  # every consumer waiting since then
        self.done = False
        self.end = 0.0  # when the run reached its minimum batches and seconds

    def restart(self, now: float) -> None:
        """Count from `now`: what came before was the pipeline filling."""
        self.start, self.images, self.batches, self.predict_s, self.idle_s = now, 0, 0, 0.0, 0.0
        self.detections = 0
        self.stage_s = dict.fromkeys(self.stage_s, 0.0)
        if self.idle_since is not None:
            self.idle_since = now

    def begin_wait(self, now: float) -> None:
        self.waiting += 1
        if self.waiting == self.consumers:
            self.idle_since = now

    def end_wait(self, now: float) -> None:
        if self.idle_since is not None and self.start is not None:
            self.idle_s += now - max(self.idle_since, self.start)
        self.idle_since = None
        self.waiting -= 1


def feed_model(adapter, feed: DecodeFeed, min_seconds: float, min_batches: int,
               consumers: int = 1) -> dict:
    """The consumer: run `adapter` as a model actor on batches from `feed` (already through
    cpu_transform) for at least `min_seconds` and `min_batches` batches. consumers: the
    batches the actor works on at once, each in its own thread (resources.concurrent_batches
    of a job; Adapter.device_turn gives one at a time the device, so one batch's
    postprocess overlaps the next one's model time).

    The clock starts when the first batch arrives. While the consumers still eat the batches
    the workers made during that fill (the first prefetch + workers), finding the queue
    empty restarts the clock and the counts from that moment, so a pre-filled queue does
    not hide a decode shortfall. -> images_per_s, input_wait (share of the wall time in
    which every consumer was blocked on the queue, 0-1), predict_share (0-1), batches,
    first_batch_s. A batch still running when the others end the run is not counted.
    """
    clock, stock = time.perf_counter, feed.ahead
    state = _FeedClock(consumers)
    asked = clock()

    def consume() -> None:
        while True:
            with state.lock:
                if state.done:
                    return
                now = clock()
                if state.start is not None and state.taken < stock and feed.empty():
                    state.restart(now)
                state.begin_wait(now)
            fed = feed.get()
            with state.lock:
                now = clock()
                if state.start is None:
                    state.start, state.first_batch_s = now, now - asked
                state.end_wait(now)
                state.taken += 1
            outputs, times = adapter.run_timed(fed.images, fed.stacked)
            if len(outputs) != len(fed.images):
                raise RuntimeError("postprocess must return one result per image")
            with state.lock:
                if state.done:
                    return
                state.images += len(fed.images)
                state.batches += 1
                state.predict_s += times["predict_ms"] * len(fed.images) / 1000.0
                for stage, ms in times.items():
                    state.stage_s[stage] += ms * len(fed.images) / 1000.0
                state.detections += sum(len(o.get("detections", ())) for o in outputs)
                if state.batches >= min_batches and clock() - state.start >= min_seconds:
                    state.done, state.end = True, clock()

    if consumers == 1:
        consume()
    else:
        with ThreadPoolExecutor(consumers) as pool:
            for future in [pool.submit(consume) for _ in range(consumers)]:
                future.result()  # a consumer's exception, raised here
    wall = state.end - state.start
    images = max(state.images, 1)
    return {"images_per_s": state.images / wall, "input_wait": state.idle_s / wall,
            "predict_share": state.predict_s / wall, "batches": state.batches,
            "first_batch_s": state.first_batch_s,
            "detections_per_image": state.detections / images,
            **{stage: 1000.0 * seconds / images for stage, seconds in state.stage_s.items()}}


def run_pipeline(case: Case, adapter, batch: int, workers: int, prefetch: int,
                 min_seconds: float, concurrent_batches: tuple[int, ...] = (1,)) -> dict:
    """The case's adapter fed as by the batch job (see DecodeFeed, feed_model), once per
    value of concurrent_batches, from one set of decode processes (spawning them costs
    seconds); printed. -> {concurrent batches: figures}."""
    jpegs = encode_jpegs(case.image_size)
    results = {}
    with DecodeFeed(adapter.spec, jpegs, batch, workers, prefetch) as feed:
        for consumers in concurrent_batches:
            feed.restart_counts()
            # Each consumer thread's first batch pays its one-time costs (a thread's first
            # calls into torch): at least PIPELINE_MIN_BATCHES a consumer.
            result = feed_model(adapter, feed, min_seconds, PIPELINE_MIN_BATCHES * consumers,
                                consumers)
            result.update(decode_busy=feed.busy_share(), decode_ms=feed.ms_per_image())
            results[consumers] = result
            print(f"case={case.name} pipeline batch={batch} "
                  f"images/s={result['images_per_s']:.2f} "
                  f"input_wait={100 * result['input_wait']:.1f}% "
                  f"predict_share={100 * result['predict_share']:.1f}% decode_workers={workers} "
                  f"prefetch={prefetch} concurrent_batches={consumers} "
                  f"decode_busy={100 * result['decode_busy']:.1f}% "
                  f"decode_ms/img={result['decode_ms']:.2f} "
                  f"jpeg_KB/img={np.mean([len(j) for j in jpegs]) / 1024:.1f} "
                  f"batches={result['batches']} first_batch_s={result['first_batch_s']:.2f} "
                  f"ms/img pre={result['preprocess_ms']:.2f} "
                  f"predict={result['predict_ms']:.2f} post={result['postprocess_ms']:.2f}"
                  + (f" dets/img={result['detections_per_image']:.1f}"
                     if case.task == "detect" else ""), flush=True)
    return results


def case_adapter(case: Case, folder: Path, device: torch.device, compile_model: bool = False,
                 pinned: bool = True):
    """The case's adapter on `folder`, set up as a GPU actor's: generating exactly
    new_tokens; a detector with the threshold that keeps about OWL_BOXES_PER_IMAGE boxes an
    image over the case's scenes. compile_model: the spec's model.compile. pinned: the
    adapter's pin_pixels (on CUDA, pixels staged in pinned memory before the device turn)."""
    build = BUILDS[case.build]
    adapter = load_adapter_class(case.task, build.family)(
        make_spec(case, build, folder, compile_model=compile_model))
    adapter.setup(device)
    adapter.pin_pixels = pinned  # kept by with_spec's copy below
    if case.new_tokens:  # exactly new_tokens: the end token is masked until then
        adapter.model.generation_config.min_new_tokens = case.new_tokens
    if case.task == "detect":
        threshold = owl_threshold(adapter, sample_images(case.image_size, DISTINCT_IMAGES))
        adapter = adapter.with_spec(make_spec(case, build, folder, threshold, compile_model))
        print(f"case={case.name} threshold={threshold:.6f} (keeps ~{OWL_BOXES_PER_IMAGE} "
              f"boxes an image over the {DISTINCT_IMAGES} scenes)")
    return adapter


def run_case(case: Case, folder: Path, device: torch.device, batch_sizes, min_seconds: float,
             min_iters: int, workers: int, prefetch: int, compile_model: bool = False,
             concurrent_batches: tuple[int, ...] = (1,), pinned: bool = True) -> dict | None:
    """Set up the case's adapter on `folder`, count its FLOPs, sweep, run the pipeline at
    the best batch size once per value of concurrent_batches; the best row (with
    "pipelines": {concurrent_batches: figures}) or None. compile_model and pinned: as
    case_adapter's (each batch size's warm-up batch compiles its graph)."""
    adapter = case_adapter(case, folder, device, compile_model, pinned)
    print(f"case={case.name} attn={describe_attention(adapter.model.config)}", flush=True)
    first = sample_images(case.image_size, 1)
    flops, raw = count_flops(adapter, first)
    if case.new_tokens and generated_lengths(case, raw) != {case.new_tokens}:
        raise RuntimeError(f"{case.name}: generated {generated_lengths(case, raw)} tokens, "
                           f"not {case.new_tokens}")
    print(f"case={case.name} GFLOP/img={flops / 1e9:.4g} (FlopCounterMode, predict at batch 1)",
          flush=True)
    rows = sweep(case, adapter, batch_sizes, device, flops, min_seconds, min_iters)
    best = max(rows, key=lambda r: r["images_per_s"]) if rows else None
    if best is not None:
        if device.type == "cuda":  # what a sweep that ran out of memory left cached
            torch.cuda.empty_cache()
        best["pipelines"] = run_pipeline(case, adapter, best["batch"], workers, prefetch,
                                         min_seconds, concurrent_batches)
    del adapter
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


def sdpa_priority(name: str) -> contextlib.AbstractContextManager:
    """--sdpa: a context that puts cuDNN's fused attention first in SDPA's order ("cudnn"),
    or leaves torch's order ("default")."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="tiny models on CPU (the default without CUDA)")
    parser.add_argument("--full-on-cpu", action="store_true",
                        help="full-size models on CPU in float32, batch 1: checks the "
                             "full-size path and counts its FLOPs before GPU time is spent "
                             "(minutes per case; its speeds say nothing about a GPU)")
    parser.add_argument("--cases", nargs="*", default=None,
                        help="run the cases named, or whose name starts with one of these")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="timed seconds per batch size at least (default 3 on a GPU, else 0)")
    parser.add_argument("--min-iters", type=int, default=None,
                        help="timed batches per batch size at least (default 3 on a GPU, else 1)")
    parser.add_argument("--decode-workers", type=int, default=DEFAULT_DECODE_WORKERS,
                        help="decode threads of the pipeline run (default: one per core but "
                             f"one, at most 15; here {DEFAULT_DECODE_WORKERS})")
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH,
                        help="batches the pipeline may hold ready for the model (default 4)")
    parser.add_argument("--concurrent-batches", nargs="+", type=int, default=[1, 2],
                        help="the pipeline run once per value: batches the actor works on at "
                             "once, in threads (a job's resources.concurrent_batches; its "
                             "default is 2 for OWLv2 with a GPU); default: 1 and 2")
    parser.add_argument("--compile", action="store_true",
                        help="model.compile: OWLv2's and Florence-2's vision towers through "
                             "torch.compile; the generative models' decoding step, with a "
                             "static KV cache")
    parser.add_argument("--sdpa", choices=("default", "cudnn"), default="default",
                        help="cudnn: torch's cuDNN fused attention first in SDPA's order of "
                             "kernels (default: torch's own order, flash first)")
    parser.add_argument("--pinned", choices=("yes", "no"), default="yes",
                        help="no: the adapters copy pixels to the GPU from where they are, "
                             "not from pinned memory (Adapter.pin_pixels), to measure what "
                             "staging gains")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's intra-op threads while a case runs (default on a GPU: "
                             "a job's GPU actor's, resources.intra_op_threads, 1 by default; "
                             "on CPU torch's own, the small mode checks code, not speed)")
    parser.add_argument("--workdir", default=None, help="where model folders are written "
                        "(default: a temporary folder, removed at the end)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.small and args.full_on_cpu:
        raise SystemExit("--small and --full-on-cpu exclude each other")
    small = args.small or not (cuda or args.full_on_cpu)
    device = torch.device("cuda") if cuda and not (small or args.full_on_cpu) else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what "auto" resolves
    on_gpu = device.type == "cuda"

    def batch_sizes(case: Case) -> tuple[int, ...]:
        if args.batch_sizes:
            return tuple(args.batch_sizes)
        if not on_gpu:
            return SMALL_BATCH_SIZES if small else CPU_FULL_BATCH_SIZES
        return GENERATIVE_BATCH_SIZES if case.new_tokens else FULL_BATCH_SIZES
    min_seconds = args.min_seconds if args.min_seconds is not None else (3.0 if on_gpu else 0.0)
    min_iters = args.min_iters if args.min_iters is not None else (3 if on_gpu else 1)
    cases = [c for c in CASES if not args.cases or any(
        c.name == p or (c.name.startswith(p) and p not in CASE_NAMES) for p in args.cases)]
    if small:
        # The tiny models' input is 96 px: a 1080p frame shrunk 20x costs the processor's
        # anti-aliasing blur seconds an image on CPU, where at full size (960 px) it is cheap.
        cases = [replace(c, image_size=small_size(c.image_size)) for c in cases]
    if (args.decode_workers < 1 or args.prefetch < 1 or min(args.concurrent_batches) < 1
            or (args.torch_threads is not None and args.torch_threads < 1)):
        raise SystemExit("--decode-workers, --prefetch, --concurrent-batches and "
                         "--torch-threads must be at least 1")
    if not cases:
        raise SystemExit(f"no case matches {args.cases}; cases: {[c.name for c in CASES]}")

    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    given = sys.argv[1:] if argv is None else argv
    print(f"command: {shlex.join([Path(sys.executable).name, 'benchmarks/gpu_throughput.py', *given])}")
    print(f"device: {name}; mode: {'small (tiny models)' if small else 'full size'}; "
          f"dtype: {dtype}; torch {torch.__version__}; transformers {transformers.__version__}")
    print("FLOPs: torch.utils.flop_counter.FlopCounterMode over adapter.predict on one image "
          "(generative: the whole generate); TFLOP/s = FLOPs/img x images/s", flush=True)

    # A job's GPU actor runs torch with one thread per reserved core (build_adapter), and each
    # of its batch threads gets a team of that size. The second H200 run had torch's default,
    # 16 a team, and two batches at once cut Florence-2's figure to a third; on CPU two teams
    # cost it 27% with 2 threads each and 8% with 1 (docs/benchmarks.md).
    threads = args.torch_threads or (ResourceSpec().intra_op_threads if on_gpu else None)
    if threads is not None:
        torch.set_num_threads(threads)
    options = (f"compile={args.compile} sdpa={args.sdpa} pinned={args.pinned} "
               f"torch_threads={torch.get_num_threads()}")
    print(f"options: {options}", flush=True)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_throughput_"))
    results = {}
    with sdpa_priority(args.sdpa):  # the whole run: sweeps and pipelines
        try:
            tiny_dirs: dict[str, Path] = {}
            for build_name in dict.fromkeys(c.build for c in cases):
                build = BUILDS[build_name]
                if build.family not in tiny_dirs:
                    tiny_dirs[build.family] = build_tiny_model(build.family,
                                                               root / f"tiny-{build.family}")
                t0 = time.perf_counter()
                folder = build_model_folder(build, tiny_dirs[build.family], root / build_name,
                                            device, dtype, small)
                print(f"built {build_name} in {time.perf_counter() - t0:.1f} s", flush=True)
                for case in (c for c in cases if c.build == build_name):
                    results[case.name] = run_case(case, folder, device, batch_sizes(case),
                                                  min_seconds, min_iters,
                                                  args.decode_workers, args.prefetch,
                                                  args.compile, tuple(args.concurrent_batches),
                                                  args.pinned == "yes")
                shutil.rmtree(folder)
        finally:
            if args.workdir is None:
                shutil.rmtree(root, ignore_errors=True)
    for case_name, best in results.items():
        if best is None:
            print(f"RESULT case={case_name} no batch size fit")
        else:
            pipelines = best["pipelines"]
            fed = ",".join(f"{n}:{figures['images_per_s']:.2f}" for n, figures in pipelines.items())
            print(f"RESULT case={case_name} images/s={best['images_per_s']:.2f} "
                  f"TFLOP/s={best['tflops']:.4g} batch={best['batch']} "
                  f"peak_mem_GiB={best['peak_gib']:.2f} "
                  f"input_wait={100 * max(f['input_wait'] for f in pipelines.values()):.1f}% "
                  f"pipeline_images/s={fed} device={name} {options}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
