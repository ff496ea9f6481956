"""What makes two runs the same job, so that a rerun resumes only its own output.

A job's identity is what shapes its rows: the input options, each task's fields except how
it runs (its resources and model.compile, which give the same rows), a digest of the
inputs (each one's id, URI and own prompt), and digests of what the tasks read besides
(`contents`: the files a task names, by their bytes, not only their paths, and the captions
pseudo-label tasks build their queries from). It is stored in
the output's `_job.json` beside its fingerprint (a SHA-256 of it); a rerun resumes when
the fingerprints are equal and is refused otherwise, naming each field that differs.

Fields left at their defaults are left out of the identity, so a later labeler that adds an
option (with a default that keeps today's behaviour) still resumes the outputs of this one;
setting a field to its default value is the same job as leaving it out.
"""

from __future__ import annotations

import hashlib
import json

from labeler.config import JobSpec, TaskSpec, decode_side_for_tasks
from labeler.jobs.examples import EXAMPLES_COLUMN, examples_text
from labeler.sources import InputItem
from labeler.storage import read_bytes, storage_error

# Bumped when the identity's layout changes in a way that old outputs cannot match.
IDENTITY_VERSION = 2
# Fields added to the spec since IDENTITY_VERSION 2: outputs written before it hold a hash
# of every field that existed then, so the legacy fingerprint leaves these out when they are
# at their defaults (a job that sets one cannot be an older labeler's job anyway).
TASK_FIELDS_AFTER_V2 = frozenset({"queries", "label_thresholds", "templates", "nms",
                                  "max_detections", "tiles", "track", "query_box",
                                  "examples"})
GENERATION_FIELDS_AFTER_V2 = frozenset({"top_k"})
SAMPLING_FIELDS_AFTER_V2 = frozenset({"min_change"})
INPUT_FIELDS_AFTER_V2 = frozenset({"subset"})
# A task's fields that say how it runs, not what it writes: never part of an identity.
HOW_A_TASK_RUNS = {"resources": True, "model": {"compile": True}}


def input_identities(items: list[InputItem]) -> list:
    """What identifies each input: its id, URI and own prompt, and its examples when it has
    them (left out otherwise, so that jobs written before them still resume)."""
    identities = []
    for i in items:
        examples = examples_text(i.metadata.get(EXAMPLES_COLUMN))
        identity = [i.id, i.uri, i.prompt]
        identities.append([*identity, examples] if examples else identity)
    return identities


def job_identity(spec: JobSpec, inputs: list, contents: dict | None = None) -> dict:
    """The identity of a job (JSON-ready); inputs: input_identities() of its inputs;
    contents: content_digests() of the job (left out when empty, so that a job that reads
    no such thing has the identity it had before they were added)."""
    identity = {
        "version": IDENTITY_VERSION,
        "input": {**spec.input.model_dump(exclude={"path"}, exclude_defaults=True),
                  **_full_size_decode(spec),
                  "files_per_shard": spec.input.effective_files_per_shard},
        "tasks": [t.model_dump(exclude=HOW_A_TASK_RUNS, exclude_defaults=True)
                  for t in spec.tasks],
        "inputs": {"count": len(inputs), "sha256": _sha256(inputs)},
    }
    if contents:
        identity["contents"] = contents
    return identity


def _full_size_decode(spec: JobSpec) -> dict:
    """{"decode_min_side": None} for an image job that decodes at full size although its
    decode_min_side is left at the default (a Qwen2-VL or Ovis2 task: decode_side_for_tasks),
    which older labelers decoded reduced: their outputs are not resumed with other pixels."""
    images = spec.input
    if (images.media == "image" and images.decode_min_side is not None
            and "decode_min_side" not in images.model_fields_set
            and decode_side_for_tasks(images.decode_min_side, spec.tasks) is None):
        return {"decode_min_side": None}
    return {}


def content_digests(spec: JobSpec, items: list[InputItem]) -> dict[str, str]:
    """{what: SHA-256} of what shapes the rows besides the spec's fields and the inputs'
    ids, URIs and prompts: each file a task names (query_image, a pseudo-label vocabulary or
    generic-words file), so that an edited file is not resumed as the same job, and the
    captions each pseudo-label task builds its queries from (already read by planning).
    Keys name the spec field ("tasks.0.pseudo_label.vocabulary_file") or
    "tasks.<k>.captions". StorageError for a file that cannot be read."""
    digests = {}
    for k, task in enumerate(spec.tasks):
        for field, path in _task_files(task):
            try:
                digests[f"tasks.{k}.{field}"] = hashlib.sha256(read_bytes(path)).hexdigest()
            except OSError as err:
                raise storage_error(path, f"read tasks.{k}.{field}", err) from None
        options = task.pseudo_label
        if task.task == "pseudo-label" and options.use_captions and not options.caption_from:
            column = options.caption_column
            digests[f"tasks.{k}.captions"] = _sha256(
                [[i.id, _text(i.metadata.get(column))] for i in items])
    return digests


def _task_files(task: TaskSpec) -> list[tuple[str, str]]:
    """(field, path) of each file the task names."""
    files = [("query_image", task.query_image)]
    if task.task == "pseudo-label":
        files += [("pseudo_label.vocabulary_file", task.pseudo_label.vocabulary_file),
                  ("pseudo_label.generic_words_file", task.pseudo_label.generic_words_file)]
    return [(field, path) for field, path in files if path]


def _text(value) -> str | None:
    """A caption as the model gets it (str() of a non-string), None for none."""
    return value if value is None or isinstance(value, str) else str(value)


def fingerprint(identity: dict) -> str:
    return _sha256(identity)


def legacy_fingerprint(spec: JobSpec, inputs: list) -> str:
    """The fingerprint outputs written before IDENTITY_VERSION 2 hold (every task field,
    defaults included, and the input list itself), so that they still resume."""
    shaping = {
        "input": {**spec.input.model_dump(exclude={
                      "path": True,
                      **dict.fromkeys(_newer_defaults(spec.input, INPUT_FIELDS_AFTER_V2), True),
                      "sampling": _newer_defaults(spec.input.sampling,
                                                  SAMPLING_FIELDS_AFTER_V2)}),
                  "files_per_shard": spec.input.effective_files_per_shard},
        "tasks": [t.model_dump(exclude={**HOW_A_TASK_RUNS, **dict.fromkeys(
                      _newer_defaults(t, TASK_FIELDS_AFTER_V2), True),
                      "generation": _newer_defaults(t.generation, GENERATION_FIELDS_AFTER_V2)})
                  for t in spec.tasks],
        "uris": inputs,
    }
    return _sha256(shaping)


def _newer_defaults(model, newer: frozenset[str]) -> set[str]:
    """The fields of `newer` that `model` leaves at their defaults."""
    return {name for name in newer
            if getattr(model, name) == type(model).model_fields[name].get_default(
                call_default_factory=True)}


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
