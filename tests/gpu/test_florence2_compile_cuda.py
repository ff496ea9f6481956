"""Florence-2's vision tower compiled (model.compile) against the same tower eager, in bf16
on CUDA: the change in how the model computes stays within bf16 rounding.

nn.Module.compile leaves the module's own forward eager and routes calls through the
compiled graph, so one loaded adapter gives both. Bound as tests/gpu/test_bf16_parity.py
bounds OWLv2's outputs: within 5% of the output's largest magnitude plus 5% of each
element. Float32 parity on CPU (1e-5, whole captions) is tests/models/test_generative_compile.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

pytestmark = pytest.mark.gpu

RELATIVE_TOLERANCE = 0.05


def test_the_compiled_vision_tower_matches_the_eager_one_in_bf16(tiny_model):
    spec = TaskSpec(task="caption", model={"family": "florence2", "source": tiny_model("florence2"),
                                           "compile": True},
                    resources={"num_gpus": 1}, generation={"max_new_tokens": 4})
    adapter = load_adapter_class("caption", "florence2")(spec)
    adapter.setup(torch.device("cuda"))
    assert adapter.dtype == torch.bfloat16
    images = [ImageInput(np.asarray(synthetic_image(640, 480, seed)), 640, 480)
              for seed in range(4)]
    tower = adapter.model.model.vision_tower
    with torch.inference_mode():
        pixel_values = adapter.preprocess(images)["inputs"]["pixel_values"]
        compiled = tower(pixel_values).last_hidden_state.float()
        eager = tower.forward(pixel_values).last_hidden_state.float()
    assert compiled.shape == eager.shape
    torch.testing.assert_close(compiled, eager, rtol=RELATIVE_TOLERANCE,
                               atol=RELATIVE_TOLERANCE * float(eager.abs().max()))
    # and a whole batch runs through generate with it
    assert len(adapter.postprocess(adapter.predict(adapter.preprocess(images)), images)) == 4
