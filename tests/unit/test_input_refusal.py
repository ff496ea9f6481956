"""Images a task's preprocessing cannot take are refused where they are decoded: an error row
naming the task in a job, a 422 naming the model over HTTP, before a model sees them.

OWLv2's processor pads to a max(w, h) square before resizing: a 20000x20 strip (400k pixels,
1.4 KB as a PNG) became a 20000x20000 float canvas; the serving replica grew to 12 GB and
the memory monitor killed the whole server. Qwen2-VL's processor raises for an aspect
ratio over 200 (a 500 "model failed" before)."""

import asyncio
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from labeler.config import TaskSpec
from labeler.jobs.stages import decode_batch
from labeler.registry import input_refusal
from labeler.serve.app import Ingress
from labeler.serve.limits import PixelBudget
from labeler.serve.config import ServeSpec
from labeler.serve.errors import ApiError

OWLV2 = {"task": "detect", "labels": ["cat"], "model": {"family": "owlv2", "source": "x"}}
QWEN = {"task": "caption", "model": {"family": "qwen2_vl", "source": "x"}}


def _png(path, width: int, height: int) -> str:
    Image.new("RGB", (width, height), (90, 120, 30)).save(path, "PNG")
    return str(path)


@pytest.mark.parametrize("task, width, height, refused", [
    (OWLV2, 20000, 20, "pads a 20000x20 image to a 20000x20000 square (400000000 pixels), "
                       "over the limit of 100000000 pixels; preprocess: fast"),
    (OWLV2, 10000, 9000, None),  # a 90 MP photo: its square is the limit
    (OWLV2, 10001, 20, "10001x10001"),
    ({**OWLV2, "preprocess": "fast"}, 20000, 20, None),  # resized before it is padded
    # Tiled: each window is padded; a 3x1 grid of a 24000x6000 panorama has square-ish tiles
    # (the whole image, also labeled by default, is not).
    ({**OWLV2, "tiles": {"grid": [3, 1], "overlap": 0.0, "full_image": False}}, 24000, 6000,
     None),
    ({**OWLV2, "tiles": {"grid": [3, 1], "overlap": 0.0}}, 24000, 6000, "the tiles of a"),
    (QWEN, 20000, 20, "at most 200 times the short one; 20000x20 is 1000 times"),
    (QWEN, 4000, 20, None),
    ({"task": "caption", "model": {"family": "blip2", "source": "x"}}, 20000, 20, None),
])
def test_what_each_task_refuses(task, width, height, refused):
    got = input_refusal(TaskSpec.model_validate(task), width, height, 100_000_000)
    assert (got is None) == (refused is None) and (refused is None or refused in got), got


def test_a_job_row_of_an_image_a_task_cannot_take_is_an_error_row(tmp_path, tiny_owlv2):
    uris = [_png(tmp_path / "strip.png", 20000, 20), _png(tmp_path / "photo.png", 64, 48)]
    batch = {"id": np.array(["strip", "photo"], dtype=object),
             "uri": np.array(uris, dtype=object)}
    fast = {**OWLV2, "preprocess": "fast", "model": {"family": "owlv2", "source": tiny_owlv2}}
    tasks = [TaskSpec.model_validate(fast),  # its CPU-stage resize takes the strip
             TaskSpec.model_validate({**QWEN, "name": "words"})]
    out = decode_batch(batch, 100_000_000, None, tasks)
    assert list(out["error"]) == [
        "task 'words' cannot take this image: Qwen2-VL takes images whose long side is at "
        "most 200 times the short one; 20000x20 is 1000 times", ""]
    assert (list(out["width"]), list(out["height"])) == ([0, 64], [0, 48])


def test_the_api_answers_422_naming_the_model_before_a_replica_sees_the_image(tmp_path):
    # No Serve: the ingress's decoding and checks alone, on a stand-in holding its spec.
    spec = ServeSpec.model_validate({"models": [{**OWLV2, "name": "owl"}]})
    ingress = SimpleNamespace(spec=spec, decoding=PixelBudget(spec.limits.max_decoding_pixels))
    strip = open(_png(tmp_path / "strip.png", 20000, 20), "rb").read()
    with pytest.raises(ApiError) as err:
        asyncio.run(Ingress._image(ingress, strip, None, ingress.spec.models))
    assert err.value.status == 422
    assert err.value.message.startswith("image cannot be used by model 'owl': OWLv2's "
                                        "processor pads a 20000x20 image to a 20000x20000")
    photo = io.BytesIO()
    Image.new("RGB", (300, 200)).save(photo, "PNG")
    decoded, _ = asyncio.run(Ingress._image(ingress, photo.getvalue(), None,
                                            ingress.spec.models))
    assert (decoded.width, decoded.height) == (300, 200)
