"""model.compile for the generative families: a static KV cache, whose decoding step
transformers compiles (on a GPU by itself; here on the CPU, where the test asks for it with
CompileConfig._compile_all_devices), and Florence-2's vision tower compiled on any device,
against the same adapter without them.

Issue 8: a change in how a model computes keeps parity with the unmodified transformers
model, float32 on CPU within 1e-5. Greedy decoding must write the same token ids, and the
chosen tokens' log-probabilities (Florence-2's rows carry them) agree within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CompileConfig

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

TOLERANCE = 1e-5
NEW_TOKENS = 12
FAMILIES = {  # family -> extra TaskSpec fields of its caption task
    "florence2": {"prompt": "<CAPTION>"},
    "qwen2_vl": {},
    "blip2": {},
    "ovis2": {},
}


def _captioner(family: str, folder: str, compile: bool):
    spec = TaskSpec(task="caption", model={"family": family, "source": folder,
                                           "compile": compile},
                    generation={"max_new_tokens": NEW_TOKENS}, **FAMILIES[family])
    adapter = load_adapter_class("caption", family)(spec)
    adapter.setup(torch.device("cpu"))
    return adapter


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_static_cache_and_compiled_decoding_give_the_same_captions(tiny_model, family):
    folder = tiny_model(family)
    images = [ImageInput(pixels=np.asarray(synthetic_image(w, h, seed)), width=w, height=h)
              for seed, (w, h) in enumerate([(96, 64), (50, 80)])]
    plain, static = _captioner(family, folder, False), _captioner(family, folder, True)
    assert "cache_implementation" not in plain.generation_kwargs()
    assert static.generation_kwargs()["cache_implementation"] == "static"
    expected = plain.predict(plain.model_inputs(images))
    if family == "florence2":  # its vision tower is compiled (nn.Module.compile), on CPU too
        assert static.model.model.vision_tower._compiled_call_impl is not None
        assert plain.model.model.vision_tower._compiled_call_impl is None
    cached = static.predict(static.model_inputs(images))  # on CPU: decoding not compiled
    forced = CompileConfig()
    forced._compile_all_devices = True  # what transformers does by itself on a GPU
    static.model.generation_config.compile_config = forced
    torch._dynamo.reset()
    compiled = static.predict(static.model_inputs(images))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing compiled"
    for actual in (cached, compiled):
        if isinstance(expected, dict):  # Florence-2: sequences and their log-probabilities
            assert torch.equal(actual["sequences"], expected["sequences"])
            torch.testing.assert_close(actual["logprobs"], expected["logprobs"],
                                       rtol=TOLERANCE, atol=TOLERANCE)
        else:
            assert torch.equal(actual, expected)
    assert static.postprocess(compiled, images) == plain.postprocess(expected, images)
