"""The decode stage of an image job, and `run_image_job`.

    from_items(rows)                       {id, uri, shard}, DECODE_BATCH per block
      .map_batches(decode_batch)           CPU tasks: read + decode, error rows for bad input
      -> the model stages and the sink of every job (labeler.jobs.runner)
"""

from __future__ import annotations

import math

from labeler.config import JobSpec, SpecError, decode_side_for_tasks
from labeler.jobs.runner import JobSummary, run_job
from labeler.storage import worker_env

# Rows per decode task: enough to amortise task overhead (~ms), small enough that the model
# actor is fed before the whole input is decoded.
DECODE_BATCH = 16
# Peak memory of one decode task, so Ray does not start more than fit. Measured by Ray Data:
# ~955 MiB for 16 OWLv2 inputs at 960 px as float32 (12 MB each, plus the decoded images
# and Arrow's copies of the output batch).
DECODE_TASK_MEMORY = 1024 * 1024**2
# Rows per decode task are divided by this when images decode at full size.
FULL_SIZE_BLOCK_DIVISOR = 4


def run_image_job(spec: JobSpec, progress: bool = True) -> JobSummary:
    """Run a validated image job to completion (see labeler.jobs.runner.run_job, which runs
    either media); SpecError for a video spec."""
    if spec.input.media != "image":
        raise SpecError(f"input.media: run_image_job runs images, not {spec.input.media}; "
                        f"use labeler.jobs.runner.run_job")
    return run_job(spec, progress)


def canvases_per_image(tasks) -> int:
    """The most model inputs a task's CPU stage makes of one image (its adapter's
    cpu_inputs_per_image: a tiled OWLv2 task's windows, when that stage prepares them)."""
    from labeler.registry import load_adapter_class

    return max(load_adapter_class(t.task, t.model.family)(t).cpu_inputs_per_image
               for t in tasks)


def decoded_images(spec: JobSpec, todo: list[dict], rows_per_block: int = DECODE_BATCH):
    """The Ray dataset of decoded image rows (labeler.jobs.stages.decode_batch), in blocks
    of at most `rows_per_block` inputs, divided by canvases_per_image: a decode task of a
    tiled job holds no more model inputs (and memory, DECODE_TASK_MEMORY) than an untiled
    one."""
    import ray

    from labeler.jobs.stages import decode_batch

    decode_side = decode_side_for_tasks(spec.input.decode_min_side, spec.tasks,
                                        "decode_min_side" in spec.input.model_fields_set)
    rows_per_block = max(1, rows_per_block // canvases_per_image(spec.tasks))
    if decode_side is None:
        # Whole images: a 12 MP one is 36 MB decoded, ~12x a reduced one, and a decode task
        # should stay near DECODE_TASK_MEMORY.
        rows_per_block = max(1, rows_per_block // FULL_SIZE_BLOCK_DIVISOR)
    ds = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / rows_per_block)))
    # One block (<= rows_per_block rows) per task, as planned: a batch size would make Ray Data
    # bundle blocks until it is reached (two blocks of 12 for 16), and a model task that
    # keeps dying loses its whole input bundle (see runner.MODEL_BATCH_ATTEMPTS).
    return ds.map_batches(decode_batch, batch_size=None,
                          fn_kwargs={"max_pixels": spec.input.max_pixels,
                                     "decode_min_side": decode_side,
                                     "tasks": list(spec.tasks)},
                          num_cpus=1,
                          # What a task holds: a batch of decoded images. Declaring it also
                          # makes these remote args differ from the actor stage's, which keeps
                          # Ray Data from fusing decode into the model actor, where it would
                          # run serially with the model (on CPU-only runs) instead of in
                          # parallel CPU tasks.
                          memory=DECODE_TASK_MEMORY, **worker_env())
