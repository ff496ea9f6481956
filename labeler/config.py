"""Job specs: YAML in, validated pydantic objects out.

Every model forbids unknown fields, so a typo is rejected with its path (`tasks.0.thresold`)
before Ray starts. `load_job_spec` merges CLI overrides into the YAML before validation, so
a flag is checked exactly like the same field in a file.
"""

from __future__ import annotations

import difflib
import glob
import json
import math
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from labeler import registry

# .avif: Pillow's own AVIF plugin; .heic / .heif (phone photos): pillow-heif's opener,
# registered by labeler.media.image.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif",
                    ".heic", ".heif")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and what is valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """`threshold: true` is a mistake, not 1.0 (pydantic reads a bool as a number)."""
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"a number is needed, not {str(value).lower()}")
        return value


def _kinds(annotation: Any) -> set:
    """The plain types an annotation admits (unions and Optional opened)."""
    if get_origin(annotation) in (Union, UnionType):
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    return {annotation}


class ModelSpec(_Strict):
    """Where a model comes from. `source` is a hub id, a local folder or an s3:// prefix."""

    family: str
    source: str
    revision: str | None = None
    # "auto": bfloat16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = Field(
        False, description="compile the model's hot path with torch.compile: OWLv2's and "
                           "Florence-2's vision towers; the generative families' decoding "
                           "step, with a static KV cache (transformers compiles it on a "
                           "GPU). One compile of tens of seconds per input shape, at its "
                           "first batch; the same outputs")

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in registry.FAMILIES:
            raise ValueError(
                f"unknown model family {family!r}; valid families: {', '.join(registry.FAMILIES)}"
            )
        return family


class ResourceSpec(_Strict):
    """How one task's actor pool is sized."""

    batch_size: int = Field(8, ge=1, description="images per forward pass (default 8; a GPU "
                                                 "actor's: its family's, 32 to 128 model "
                                                 "inputs, fewer images when tiled)")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors in the pool: a number, or [min, max] for a pool that Ray Data "
                       "grows while work waits and the cluster has room (autoscaling)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions share a GPU")
    num_cpus: float = Field(1.0, gt=0, description="CPU cores each actor reserves")
    torch_threads: int | None = Field(
        None, ge=1, description="torch's intra-op threads in an actor (default: num_cpus, "
                                "at least 1). More threads than reserved cores let a CPU "
                                "actor use the time decoding leaves idle")
    concurrent_batches: int | None = Field(
        None, ge=1, le=8,
        description="batches an actor works on at once, each in its own thread: one runs "
                    "the model while the others are postprocessed and turned into rows, so "
                    "the GPU does not wait for that host work; one at a time on the device "
                    "(default: 2 for OWLv2 with a GPU; 1 for the generative families, whose "
                    "generate loop a second thread slows, and on CPU, where the model "
                    "already uses every reserved core)")

    @property
    def intra_op_threads(self) -> int:
        """torch's intra-op threads in an actor: torch_threads, else one per reserved core."""
        return self.torch_threads or max(1, int(self.num_cpus))

    @field_validator("concurrency")
    @classmethod
    def _pool_size(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if low < 1 or high < low:
            shown = value if isinstance(value, int) else list(value)
            raise ValueError(f"{shown}: a number of actors >= 1, or [min, max] with "
                             f"1 <= min <= max")
        return value

    @property
    def min_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[0]

    @property
    def max_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[1]


class GenerationSpec(_Strict):
    """Decoding options of generative models (Florence-2, BLIP-2, Qwen2-VL, Ovis2)."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    num_beams: int = Field(1, ge=1, le=16)
    do_sample: bool = Field(False, description="sample instead of greedy / beam search")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # Passed whenever sampling, so that the spec, not the checkpoint, says how: Qwen2-VL's
    # Instruct checkpoints ship top_k 1, which made every sample the greedy text.
    top_k: int = Field(50, ge=0, description="sample among the k likeliest tokens (0: no "
                                             "cut); transformers' default 50")
    seed: int | None = Field(None, description="seed for sampling; fixed seed, same text")


def check_templates(templates: list[str]) -> list[str]:
    """Prompt templates: each holds exactly one '{}', where the query goes."""
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must hold exactly one '{{}}'")
    return templates


# A query asked as it is: no prompt ensembling.
QUERY_ALONE = ["{}"]


# Tasks whose rows' `text` is a caption of the whole image, which pseudo-label may take its
# queries from (pseudo_label.caption_from).
CAPTION_SOURCE_TASKS = ("caption", "ocr", "ask")


class PseudoLabelSpec(_Strict):
    """OWL-ST pseudo-annotation (task pseudo-label): queries from each image's caption and/or
    a curated vocabulary; see labeler.pseudo. The box threshold is the task's `threshold`."""

    caption_column: str = Field("caption", description="input column holding each image's "
                                "caption (manifest alt text, WebDataset .txt, .txt beside it)")
    caption_from: str | None = Field(None, description="name of a task of this job whose "
                                     "text output (a caption) is the caption instead")
    vocabulary: list[str] = Field(default_factory=list, description="curated class names")
    vocabulary_file: str | None = Field(None, description="file of class names, one per line")
    # The OWL-ST paper's combined mode: curated queries' scores are multiplied by 0.3 before
    # thresholding, so caption n-grams win where both describe a box.
    vocabulary_weight: float = Field(0.3, gt=0.0, le=1.0)
    use_captions: bool = Field(True, description="build queries from captions (false: "
                                                 "the vocabulary alone)")
    templates: list[str] = Field(default_factory=lambda: ["{}"], min_length=1,
                                 description="prompt templates, each with one {}; a query's "
                                             "embedding is the mean over them")
    image_threshold: float = Field(0.3, ge=0.0, le=1.0,
                                   description="an image is kept when its best box scores this")
    max_queries: int = Field(300, ge=1, description="caption queries per image (paper: 300)")
    max_ngram: int = Field(10, ge=1, le=32, description="longest word n-gram (paper: 10)")
    generic_words_file: str | None = Field(None, description="replaces the shipped list of "
                                           "generic words (jpg, stock, image, ...)")

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        return check_templates(templates)

    @field_validator("vocabulary_file", "generic_words_file")
    @classmethod
    def _file_exists(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("s3://"):
            if not os.path.isfile(path):
                raise ValueError(f"file {path!r} does not exist")
            try:  # read on every actor: a file it cannot read must stop the job here
                with open(path, encoding="utf-8-sig") as f:
                    f.read()
            except UnicodeDecodeError as err:
                raise ValueError(f"file {path!r} is not UTF-8 text ({err.reason} at byte "
                                 f"{err.start})") from None
            except OSError as err:
                raise ValueError(f"file {path!r} cannot be read: {err}") from None
        return path

    @model_validator(mode="after")
    def _caption_options(self) -> "PseudoLabelSpec":
        if self.caption_from is not None and not self.use_captions:
            raise ValueError("caption_from: a caption task is named but use_captions is false "
                             "(the vocabulary alone): drop one of them")
        if self.caption_from is not None and self.caption_column != "caption":
            raise ValueError("caption_column: the captions come from the caption_from task, "
                             "not from an input column: give one of them")
        return self


# Tasks whose boxes `nms` and `max_detections` may thin out (detect-by-example has its
# documented NMS built in).
NMS_TASKS = ("detect", "ground", "regions")
# Tasks and family that label tiles (TilingSpec): OWLv2's detectors, whose boxes come from
# one forward pass of a fixed input size, so a tile is labelled exactly as an image is.
TILED_TASKS = ("detect", "ground", "detect-by-example")
TILED_FAMILY = "owlv2"
# The most tiles a side: 8 x 8 tiles and the whole image are 65 forward passes an image.
MAX_TILES_PER_SIDE = 8


class ExampleSpec(_Strict):
    """A box drawn around an object in an image, for detect-by-example to find more of:
    the job's few-shot queries (a label's boxes averaged, across images too)."""

    image: str = Field(min_length=1, description="the image the box is drawn on: a path or "
                                                 "s3:// URI")
    box: tuple[float, float, float, float] = Field(
        description="x0, y0, x1, y1 in pixels of the image as displayed")
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="the class the box shows: its detections' label")

    @model_validator(mode="after")
    def _ordered(self) -> "ExampleSpec":
        x0, y0, x1, y1 = self.box
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"box {list(self.box)}: x0 < x1 and y0 < y1, pixels from the "
                             f"image's top left")
        return self


class TilingSpec(_Strict):
    """Sliced inference (as SAHI does it) for objects too small to see once a large image is
    resized to the model's input (960 px for OWLv2 B/16): each image is also labelled as a
    grid of overlapping tiles, each tile resized to the full input size, and the boxes of
    every tile and of the whole image are merged (labeler.models.tiling)."""

    grid: tuple[int, int] = Field(
        (2, 2), description="tiles across and down the image, [columns, rows]; each side of a "
                            "tile spans 1 / (n - (n - 1) * overlap) of the image's")
    overlap: float = Field(0.2, ge=0.0, lt=0.5,
                           description="fraction of a tile's width (height) that its neighbour "
                                       "across (down) shares; an object narrower than that is "
                                       "whole in some tile")
    full_image: bool = Field(True, description="also label the whole image, which finds the "
                                               "objects larger than a tile")
    merge_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="two boxes of one label whose intersection covers "
                                         "this fraction of the smaller one are merged into the "
                                         "box around both (SAHI's greedy NMM by IoS)")

    @field_validator("grid")
    @classmethod
    def _grid_size(cls, grid: tuple[int, int]) -> tuple[int, int]:
        columns, rows = grid
        if not (1 <= columns <= MAX_TILES_PER_SIDE and 1 <= rows <= MAX_TILES_PER_SIDE):
            raise ValueError(f"{list(grid)}: columns and rows are each 1 to {MAX_TILES_PER_SIDE}")
        if columns * rows == 1:
            raise ValueError("[1, 1] is the whole image, which is labelled anyway; give at "
                             "least two tiles, e.g. [2, 2]")
        return grid

    @property
    def inputs_per_image(self) -> int:
        """Model inputs per image: the grid's tiles, and the whole image when full_image."""
        return self.grid[0] * self.grid[1] + int(self.full_image)

    @property
    def magnification(self) -> float:
        """How many times larger than the whole image's a tile's content appears in the model
        input, along the grid's denser side: n - (n - 1) * overlap for n tiles a side."""
        return max(n - (n - 1) * self.overlap for n in self.grid)


# Tasks whose boxes name objects (a class or a phrase), so that a video's boxes of one label
# can be linked across frames into tracks (TrackingSpec). Region captions are not: their
# label is a caption that changes from frame to frame.
TRACKED_TASKS = ("detect", "ground", "detect-by-example")


class TrackingSpec(_Strict):
    """Multi-object tracking over a video's labeled frames: each box gets a `track_id`
    shared with the boxes of the same object in the video's other frames
    (labeler.tracking). Boxes are linked per label, frame by frame in time order, as
    ByteTrack does: a track's box is predicted at constant velocity, matched to the frame's
    boxes by IoU with an optimal assignment, high-scored boxes first (then again with both
    boxes buffered, as C-BIoU does), then the rest."""

    iou: float = Field(0.3, gt=0.0, le=1.0,
                       description="least IoU between a track's predicted box and a box of its "
                                   "label for the box to continue the track")
    buffer: float | None = Field(
        0.5, ge=0.0, le=2.0, description="a second round for the high-scored boxes and tracks "
                                         "left: IoU of both boxes grown by this share of their "
                                         "size on every side (C-BIoU), which follows objects "
                                         "that move more than their overlap between frames; "
                                         "null: no second round")
    max_missed: int = Field(3, ge=0, description="labeled frames in a row a track may go "
                                                 "unmatched and still be continued; then it "
                                                 "ends, and the object seen again starts a new one")
    new_track_score: float | None = Field(
        None, ge=0.0, le=1.0, description="least score of a box that starts a track; a box "
                                          "scored lower only continues one (ByteTrack's second "
                                          "association). Default: any box may start a track")
    min_length: int = Field(1, ge=1, description="a track of fewer boxes is dropped: its boxes "
                                                 "keep their place with track_id null")
    across_labels: bool = Field(
        False, description="link boxes whatever their label: an open-vocabulary detector may "
                           "call an object 'car' in one frame and 'truck' in the next; a track "
                           "then holds boxes of several labels (nms: all keeps one box per "
                           "object and frame)")

    def summary_text(self) -> str:
        """How a job summary's task line names these settings: 'track {...}', the fields
        that differ from the defaults."""
        return f"track {json.dumps(self.model_dump(exclude_defaults=True))}"


class TaskSpec(_Strict):
    """One labeling task over every input."""

    task: str
    model: ModelSpec
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                             description="output name, a folder name: letters, digits, _ . "
                                         "and -, starting with a letter or digit (_ and . "
                                         "mark staging and reports); defaults to the task")
    labels: list[str] = Field(default_factory=list, description="class names for detect")
    threshold: float = Field(0.1, ge=0.0, le=1.0, description="minimum box score")
    # An ontology in the manner of autodistill's CaptionOntology: what the model is asked
    # (a phrase it grounds well, synonyms) kept apart from the class name written out.
    queries: dict[str, list[str]] = Field(
        default_factory=dict, description="detect: text queries of a label (synonyms, longer "
                                          "phrases); a label not listed is queried by its name")
    label_thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict, description="detect: minimum box score of a label, in place of "
                                          "`threshold`")
    # Prompt ensembling (CLIP, OWL-ViT): a query's text embedding is the mean over these
    # templates filled with it, e.g. ["a photo of a {}.", "a photo of the {}."].
    templates: list[str] = Field(default_factory=lambda: list(QUERY_ALONE), min_length=1,
                                 description="detect (OWLv2): prompt templates, each with one "
                                             "{}; a query's embedding is the mean over them")
    prompt: str | None = Field(
        None, description="instruction, question or phrases; Florence-2: may start with a task "
                          "token such as <MORE_DETAILED_CAPTION>. Default: the adapter's")
    query_image: str | None = Field(None, description="example image for detect-by-example")
    query_box: tuple[float, float, float, float] | None = Field(
        None, description="detect-by-example: x0, y0, x1, y1 in pixels of query_image (as "
                          "displayed) around the object to find; default: the image's most "
                          "object-like box")
    examples: list[ExampleSpec] | None = Field(
        None, min_length=1, description="detect-by-example: boxes drawn on images, each with "
                                        "its label, instead of a query_image (few-shot)")
    nms: Literal["none", "per-label", "all"] = Field(
        "none", description="detect, ground, regions: drop a box that overlaps a higher-scored "
                            "one by IoU > nms_threshold, among boxes of its label or among all")
    max_detections: int | None = Field(
        None, ge=1, description="detect, ground, regions: keep a row's best boxes only, after nms")
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0,
                                 description="IoU above which NMS drops a box (detect-by-example, "
                                             "and `nms`)")
    generation: GenerationSpec = GenerationSpec()
    pseudo_label: PseudoLabelSpec = PseudoLabelSpec()
    # "processor": transformers' image processor, exact (what the reference tests check).
    # "fast": batched uint8 resize, pad and normalize in torch; see docs/preprocessing.md.
    preprocess: Literal["processor", "fast"] = "processor"
    tiles: TilingSpec | None = Field(None, description="detect, ground, detect-by-example "
                                     "(OWLv2): label each image as overlapping tiles too")
    track: TrackingSpec | None = Field(None, description="detect, ground, detect-by-example "
                                       "on video frames: link each video's boxes into tracks")
    resources: ResourceSpec = ResourceSpec()

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in registry.TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(registry.TASKS)}")
        return task

    @field_validator("labels")
    @classmethod
    def _clean_labels(cls, labels: list[str]) -> list[str]:
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise ValueError("labels must not be empty strings")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("labels must be unique")
        return cleaned

    @field_validator("queries")
    @classmethod
    def _clean_queries(cls, queries: dict[str, list[str]],
                       info: ValidationInfo) -> dict[str, list[str]]:
        """Each key a label, each list non-empty, and every query (a label's own name
        included, for labels not listed) asks for one label only."""
        labels = info.data.get("labels")
        if labels is None:  # labels failed validation: reported there
            return queries
        cleaned = {}
        for label, phrases in queries.items():
            if label not in labels:
                raise ValueError(f"{label!r} is not one of labels {labels}")
            phrases = [phrase.strip() for phrase in phrases]
            if not phrases or any(not phrase for phrase in phrases):
                raise ValueError(f"{label!r}: a label's queries are a non-empty list of "
                                 f"non-empty phrases")
            cleaned[label] = list(dict.fromkeys(phrases))
        owner: dict[str, str] = {}
        for label in labels:
            for phrase in cleaned.get(label, [label]):
                other = owner.setdefault(phrase.casefold(), label)
                if other != label:
                    raise ValueError(f"the query {phrase!r} asks for both {other!r} and "
                                     f"{label!r}; a query names one label")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _template_slots(cls, templates: list[str]) -> list[str]:
        return check_templates(templates)

    @field_validator("label_thresholds")
    @classmethod
    def _known_label_thresholds(cls, thresholds: dict[str, float],
                                info: ValidationInfo) -> dict[str, float]:
        labels = info.data.get("labels")
        for label in thresholds:
            if labels is not None and label not in labels:
                raise ValueError(f"{label!r} is not one of labels {labels}")
        return thresholds

    @model_validator(mode="after")
    def _gpu_batch_size(self) -> "TaskSpec":
        """A GPU actor whose spec names no batch_size gets its family's
        (registry.GPU_BATCH_INPUTS model inputs, divided among a tiled image's windows, and
        in proportion to a fraction of a GPU, whose memory the actors sharing it share): 8,
        the CPU's default, left Florence-2 base at 34 captions/s of the 163 it reached at 128
        on an H200. A clip task's rows are clips of many frames: those keep 8."""
        resources = self.resources
        if ("batch_size" not in resources.model_fields_set and resources.num_gpus > 0
                and not self.takes_clips):
            inputs = registry.GPU_BATCH_INPUTS[self.model.family] * min(1.0, resources.num_gpus)
            per_image = self.tiles.inputs_per_image if self.tiles is not None else 1
            batch = max(1, int(inputs) // per_image)
            # The spec is frozen once built; this is its building. The copy counts batch_size
            # among the fields set, as the spec a worker re-reads from its JSON does.
            object.__setattr__(self, "resources",
                               resources.model_copy(update={"batch_size": batch}))
        return self

    @model_validator(mode="after")
    def _pair_and_requirements(self) -> "TaskSpec":
        self.check_pairs()
        # Each adapter states what it needs (labels, a prompt of a given form, ...).
        registry.load_adapter_class(self.task, self.model.family).check_spec(self)
        return self

    def check_pairs(self) -> None:
        """The options that apply to some tasks or families only, against this task's."""
        if (self.queries or self.label_thresholds) and self.task != "detect":
            raise ValueError("queries and label_thresholds apply to task 'detect' only")
        if self.templates != QUERY_ALONE and self.task != "detect":
            raise ValueError("templates apply to task 'detect' only (pseudo-label: "
                             "pseudo_label.templates)")
        if self.nms != "none" and self.task not in NMS_TASKS:
            raise ValueError(f"nms applies to tasks {', '.join(NMS_TASKS)} (detect-by-example "
                             f"always suppresses, at nms_threshold)")
        if self.max_detections is not None and self.task not in NMS_TASKS:
            raise ValueError(f"max_detections applies to tasks {', '.join(NMS_TASKS)}")
        if self.tiles is not None and (self.task not in TILED_TASKS
                                       or self.model.family != TILED_FAMILY):
            raise ValueError(f"tiles apply to tasks {', '.join(TILED_TASKS)} of family "
                             f"{TILED_FAMILY}, not {self.task!r} of {self.model.family!r}")
        if self.track is not None and self.task not in TRACKED_TASKS:
            raise ValueError(f"track applies to tasks {', '.join(TRACKED_TASKS)} (boxes of "
                             f"named objects), not {self.task!r}")
        registry.adapter_path(self.task, self.model.family)  # raises with the valid pairs
        if self.examples is not None and (self.query_image or self.task != "detect-by-example"):
            raise ValueError("examples are detect-by-example's queries, instead of a "
                             "query_image: give one or the other")
        if (self.query_image or self.query_box is not None) and self.task != "detect-by-example":
            raise ValueError(f"task {self.task!r} takes no query_image (query_image and "
                             f"query_box are detect-by-example's query)")
        if self.query_box is not None:
            if not self.query_image:
                raise ValueError("query_box is a box in query_image: give the query_image")
            x0, y0, x1, y1 = self.query_box
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise ValueError(f"query_box {list(self.query_box)}: x0 < x1 and y0 < y1, "
                                 f"pixels from the image's top left")
        if self.task != "pseudo-label" and self.pseudo_label != PseudoLabelSpec():
            raise ValueError("pseudo_label options apply only to task 'pseudo-label'")
        # Options the task would accept and never read (they would also enter the job's
        # identity, blocking a resume for nothing).
        if (self.model.family not in registry.GENERATIVE_FAMILIES
                and self.generation != GenerationSpec()):
            raise ValueError(f"generation applies to the generative families "
                             f"({', '.join(registry.GENERATIVE_FAMILIES)}), not "
                             f"{self.model.family!r}, which generates no text")
        if (self.nms == "none" and self.task != "detect-by-example"
                and self.nms_threshold != TaskSpec.model_fields["nms_threshold"].default):
            raise ValueError("nms_threshold is the IoU of nms, which is 'none': set nms "
                             "(per-label or all) too")
        if self.preprocess != "processor" and self.model.family != "owlv2":
            raise ValueError(f"preprocess: {self.preprocess!r} applies to family owlv2 "
                             f"(the other families have one way to preprocess)")

    def label_queries(self) -> list[list[str]]:
        """The text queries of each label, in label order: its `queries` entry, else the
        label itself."""
        return [self.queries.get(label, [label]) for label in self.labels]

    def threshold_for(self, label: str) -> float:
        """The minimum score of a box labelled `label`."""
        return self.label_thresholds.get(label, self.threshold)

    @property
    def output_name(self) -> str:
        return self.name or self.task

    @property
    def batches_at_once(self) -> int:
        """resources.concurrent_batches, or its default: 2 for a GPU actor of a family whose
        host work (postprocess, row building) is worth overlapping with the next batch's
        model time, 1 for the generative families and on CPU. Measured on an H200
        (docs/benchmarks.md): OWLv2 B/16 fed as a job ran faster with 2, Florence-2 slower."""
        resources = self.resources
        if resources.concurrent_batches is not None:
            return resources.concurrent_batches
        overlaps = resources.num_gpus > 0 and self.model.family not in registry.GENERATIVE_FAMILIES
        return 2 if overlaps else 1

    @property
    def takes_clips(self) -> bool:
        return self.task in registry.CLIP_TASKS


class SamplingSpec(_Strict):
    """Which frames of each video per-frame tasks label. At most one of fps, every_n_frames,
    keyframes, frames_per_video; none given means 1 frame per second."""

    # 1e-6: a frame every 11.6 days, the finest rate `exact` keeps apart from 0.
    fps: float | None = Field(None, ge=1e-6, le=1000, description="frames per second")
    every_n_frames: int | None = Field(None, ge=1, description="every n-th frame")
    keyframes: bool = Field(False, description="key frames only (never decodes the others)")
    frames_per_video: int | None = Field(None, ge=1, description="n frames spread uniformly")
    max_frames: int | None = Field(None, ge=1, description="at most this many per video")
    start_s: float | None = Field(None, ge=0, allow_inf_nan=False,
                                  description="range start, seconds, inclusive")
    end_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                description="range end, seconds, exclusive")
    min_change: float | None = Field(
        None, gt=0, le=1, description="skip a sampled frame whose grey 32x32 thumbnail differs "
        "from the last labeled frame's by less than this mean absolute difference (fraction of "
        "full scale; 0.02-0.05 skips a static scene, not a person entering it)")

    @model_validator(mode="after")
    def _one_mode(self) -> "SamplingSpec":
        modes = [name for name in ("fps", "every_n_frames", "frames_per_video")
                 if getattr(self, name) is not None] + (["keyframes"] if self.keyframes else [])
        if len(modes) > 1:
            raise ValueError(f"give one sampling mode, not {' and '.join(modes)}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self

    def sampling(self):
        """The labeler.media.video.Sampling these options describe."""
        from labeler.media.video import Sampling

        common = {"max_frames": self.max_frames, "start_s": self.start_s, "end_s": self.end_s,
                  "min_change": self.min_change}
        if self.every_n_frames is not None:
            return Sampling(mode="every_n_frames", every_n_frames=self.every_n_frames, **common)
        if self.keyframes:
            return Sampling(mode="keyframes", **common)
        if self.frames_per_video is not None:
            return Sampling(mode="uniform", num_frames=self.frames_per_video, **common)
        return Sampling(mode="fps", fps=self.fps or 1.0, **common)


class ClipSpec(_Strict):
    """How clip tasks (video-caption, video-ask) cut each video: consecutive windows of
    `seconds` (the last one may be shorter), frames sampled at `fps` inside each."""

    seconds: float = Field(gt=0, allow_inf_nan=False, description="clip length in seconds")
    fps: float = Field(1.0, gt=0, le=30, description="frames per second inside a clip")
    max_side: int = Field(448, ge=28, description="frames are scaled so their long side is at "
                                                  "most this many pixels (memory per clip)")


class SubsetSpec(_Strict):
    """A reproducible random subset of the inputs (labeler.sources.subset): `count` inputs,
    or about `fraction` of them, chosen by a hash of each input's id and `seed`. The same
    subset on every run; a larger one with the same seed holds the smaller."""

    count: int | None = Field(None, ge=1, description="this many inputs (all, if fewer)")
    fraction: float | None = Field(None, gt=0, le=1, description="about this share of inputs")
    seed: int = Field(0, ge=0, description="another seed draws another subset")

    @model_validator(mode="after")
    def _one_size(self) -> "SubsetSpec":
        if (self.count is None) == (self.fraction is None):
            raise ValueError("give the subset's count or its fraction (one of them), e.g. "
                             "{count: 500} or --subset 500, {fraction: 0.01} or --subset 1%")
        return self

    def describe(self) -> str:
        size = f"count {self.count}" if self.count is not None else f"fraction {self.fraction:g}"
        return f"{size}, seed {self.seed}"


class InputSpec(_Strict):
    """What to label: a folder (searched recursively), a glob, an s3:// prefix or a manifest
    of image files, or of video files with media: video."""

    path: str
    media: Literal["image", "video"] = "image"
    sampling: SamplingSpec = SamplingSpec()
    clip: ClipSpec | None = Field(None, description="clip options; required by clip tasks")
    # Decompression-bomb guard: images with more pixels are refused with an error row.
    max_pixels: int = Field(100_000_000, ge=1)
    # JPEGs are decoded at the largest power-of-two reduction (Pillow's draft mode) whose
    # long side stays >= this many pixels, other formats decoded whole then reduced by the
    # largest whole factor that keeps it (labeler.media.image); null: full size. 1008 is the
    # largest fixed model input (OWLv2 L/14), so the model sees no less detail than it can
    # use. A job with tiled tasks decodes larger, so each tile keeps it, and one with a
    # Qwen2-VL or Ovis2 task (dynamic resolution) at full size unless this is set
    # (decode_side_for_tasks).
    decode_min_side: int | None = Field(1008, ge=1)
    files_per_shard: int | None = Field(
        None, ge=1, description="inputs per output Parquet file (default: 256 images, 4 videos)")
    subset: SubsetSpec | None = Field(
        None, description="label only a reproducible random subset of the inputs (videos, "
        "with media: video): a trial before the whole set")

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        if path.startswith("s3://"):
            if "*" in path:  # not ? or [, which an S3 key may hold
                raise ValueError(f"{path!r}: globs match local files only; give an "
                                 f"s3:// prefix (every image under it is an input) or a "
                                 f"manifest listing the objects")
            return path
        if glob.has_magic(path):
            if not glob.glob(path, recursive=True):
                raise ValueError(f"input glob {path!r} matches no file")
            return path
        if not os.path.exists(path):
            raise ValueError(f"input path {path!r} does not exist")
        return path

    @property
    def effective_files_per_shard(self) -> int:
        """files_per_shard, else the media's default. A shard's file is written when all its
        inputs are done, which is also the unit a rerun resumes from: 256 images are a few
        minutes of labeling, but 256 videos can be hours, all redone after a crash (and their
        records held by the driver until then), so videos go 4 to a file."""
        if self.files_per_shard is not None:
            return self.files_per_shard
        return 4 if self.media == "video" else 256


def decode_side_for_tasks(decode_min_side: int | None, tasks: list[TaskSpec],
                          explicit: bool = False) -> int | None:
    """The long side images are decoded (reduced) at no less than: decode_min_side for the
    whole image, times the largest tiling magnification, so that a tile, too, keeps
    decode_min_side pixels across its image's long side. None: full size, as asked
    (decode_min_side None) or, unless decode_min_side was set (`explicit`), for tasks of
    registry.FULL_RESOLUTION_FAMILIES, whose processors use every pixel."""
    if decode_min_side is None:
        return None
    if not explicit and any(t.model.family in registry.FULL_RESOLUTION_FAMILIES
                            for t in tasks):
        return None
    factor = max((t.tiles.magnification for t in tasks if t.tiles is not None), default=1.0)
    return math.ceil(decode_min_side * factor)


class OutputSpec(_Strict):
    path: str
    overwrite: bool = Field(False, description="delete earlier results under path first")
    retry_errors: bool = Field(
        False, description="on a rerun, label again every input that has an error row in a "
        "committed shard (a storage outage, a worker that died), rewriting those shards")

    @model_validator(mode="after")
    def _retry_needs_results(self) -> "OutputSpec":
        if self.overwrite and self.retry_errors:
            raise ValueError("retry_errors relabels the error rows of earlier results, which "
                             "overwrite deletes first; set one of them")
        return self


def _options_off_when_unset(*specs: type[BaseModel]) -> frozenset[str]:
    """The names of the specs' option groups that are off unless set (`track`, `tiles`,
    `clip`, `subset`: a model or None, None by default)."""
    return frozenset(
        name for spec in specs for name, field in spec.model_fields.items()
        if field.default is None
        and any(isinstance(arg, type) and issubclass(arg, BaseModel)
                for arg in get_args(field.annotation)))


OPTIONS_OFF_WHEN_UNSET = _options_off_when_unset(TaskSpec, InputSpec)


class RaySpec(_Strict):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")


class JobSpec(_Strict):
    input: InputSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    output: OutputSpec
    ray: RaySpec = RaySpec()

    @model_validator(mode="after")
    def _unique_task_names(self) -> "JobSpec":
        names = [t.output_name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique (set `name:` on repeated tasks), got {names}")
        return self

    @model_validator(mode="after")
    def _media_fits_tasks(self) -> "JobSpec":
        """Clip tasks need video and clip options; one video job labels either frames or
        clips (their rows come from different passes over each video)."""
        clip_tasks = [t.task for t in self.tasks if t.takes_clips]
        tracked = [k for k, t in enumerate(self.tasks) if t.track is not None]
        if tracked and self.input.media != "video":
            raise ValueError(f"tasks.{tracked[0]}.track links boxes across a video's frames; "
                             f"set input.media: video (--media video)")
        if self.input.media == "image":
            if clip_tasks:
                raise ValueError(f"task {clip_tasks[0]!r} labels video clips; set "
                                 f"input.media: video (--media video)")
            if self.input.clip is not None or self.input.sampling != SamplingSpec():
                raise ValueError("input.sampling and input.clip apply to media: video only")
            return self
        if clip_tasks and len(clip_tasks) < len(self.tasks):
            raise ValueError("a video job runs clip tasks (video-caption, video-ask) or "
                             "per-frame tasks, not both; run two jobs")
        if clip_tasks and self.input.sampling != SamplingSpec():
            raise ValueError("input.sampling chooses frames for per-frame tasks; clip tasks "
                             "sample inside each clip at input.clip.fps (--clip-fps)")
        if clip_tasks and self.input.clip is None:
            raise ValueError(f"task {clip_tasks[0]!r} needs input.clip.seconds (--clip-seconds)")
        if not clip_tasks and self.input.clip is not None:
            raise ValueError("input.clip is set but no task takes clips (video-caption, "
                             "video-ask)")
        return self

    @model_validator(mode="after")
    def _caption_sources(self) -> "JobSpec":
        names = [t.output_name for t in self.tasks]
        for k, task in enumerate(self.tasks):
            source = task.pseudo_label.caption_from
            if task.task != "pseudo-label" or source is None:
                continue
            if source not in names[:k]:
                raise ValueError(f"tasks.{k}.pseudo_label.caption_from: {source!r} is not an "
                                 f"earlier task of this job (earlier tasks: {names[:k] or 'none'})")
            kind = self.tasks[names.index(source)].task
            if kind not in CAPTION_SOURCE_TASKS:
                raise ValueError(f"tasks.{k}.pseudo_label.caption_from: {source!r} is a {kind} "
                                 f"task, which writes no caption; name a task of kind "
                                 f"{', '.join(CAPTION_SOURCE_TASKS)}")
        return self


# CLI flag -> where it lands in the spec. Task-level flags apply to every task of the spec
# (and create the single task when there is no spec file).
TASK_FLAGS = {"task": ("task",), "family": ("model", "family"), "model": ("model", "source"),
              "revision": ("model", "revision"), "compile": ("model", "compile"),
              "labels": ("labels",), "threshold": ("threshold",),
              "queries": ("queries",), "label_thresholds": ("label_thresholds",),
              "templates": ("templates",),
              "prompt": ("prompt",), "query_image": ("query_image",),
              "query_box": ("query_box",),
              "nms": ("nms",), "nms_threshold": ("nms_threshold",),
              "max_detections": ("max_detections",),
              "max_new_tokens": ("generation", "max_new_tokens"),
              "num_beams": ("generation", "num_beams"), "seed": ("generation", "seed"),
              "preprocess": ("preprocess",), "tiles": ("tiles", "grid"),
              "tile_overlap": ("tiles", "overlap"), "track_iou": ("track", "iou"),
              "track_max_missed": ("track", "max_missed"),
              "track_across_labels": ("track", "across_labels"),
              "batch_size": ("resources", "batch_size"),
              "concurrency": ("resources", "concurrency"), "num_gpus": ("resources", "num_gpus"),
              "actor_cpus": ("resources", "num_cpus"),
              "torch_threads": ("resources", "torch_threads"),
              "concurrent_batches": ("resources", "concurrent_batches"),
              "box_threshold": ("threshold",),
              "image_threshold": ("pseudo_label", "image_threshold"),
              "caption_column": ("pseudo_label", "caption_column"),
              "vocabulary": ("pseudo_label", "vocabulary_file")}


def _family_of(task: dict) -> Any:
    model = task.get("model")
    return model.get("family") if isinstance(model, dict) else None


# Task flags that set an option only some tasks take -> (those tasks, which they are): they
# apply to those tasks of the job only (in the README's caption + pseudo-label job, the
# caption task refuses pseudo_label options and the OWLv2 task generation options; a detect
# task's threshold is not the box threshold).
_PSEUDO_LABEL = (lambda task: task.get("task") == "pseudo-label", "pseudo-label")
_GENERATIVE = (lambda task: _family_of(task) in registry.GENERATIVE_FAMILIES,
               f"generative ({', '.join(registry.GENERATIVE_FAMILIES)})")
_TRACKED = (lambda task: task.get("task") in TRACKED_TASKS, f"box ({', '.join(TRACKED_TASKS)})")
PARTIAL_FLAGS = {"box_threshold": _PSEUDO_LABEL, "image_threshold": _PSEUDO_LABEL,
                 "caption_column": _PSEUDO_LABEL, "vocabulary": _PSEUDO_LABEL,
                 "max_new_tokens": _GENERATIVE, "num_beams": _GENERATIVE, "seed": _GENERATIVE,
                 "preprocess": (lambda task: _family_of(task) == "owlv2", "owlv2"),
                 "track": _TRACKED, "track_iou": _TRACKED, "track_max_missed": _TRACKED,
                 "track_across_labels": _TRACKED}
JOB_FLAGS = {"input": ("input", "path"), "output": ("output", "path"),
             "overwrite": ("output", "overwrite"), "retry_errors": ("output", "retry_errors"),
             "max_pixels": ("input", "max_pixels"),
             "decode_min_side": ("input", "decode_min_side"),
             "subset": ("input", "subset"), "subset_seed": ("input", "subset", "seed"),
             "ray_address": ("ray", "address"), "media": ("input", "media"),
             "sample_fps": ("input", "sampling", "fps"),
             "every_n_frames": ("input", "sampling", "every_n_frames"),
             "keyframes": ("input", "sampling", "keyframes"),
             "frames_per_video": ("input", "sampling", "frames_per_video"),
             "max_frames": ("input", "sampling", "max_frames"),
             "min_change": ("input", "sampling", "min_change"),
             "start_s": ("input", "sampling", "start_s"), "end_s": ("input", "sampling", "end_s"),
             "clip_seconds": ("input", "clip", "seconds"), "clip_fps": ("input", "clip", "fps")}


def _set(tree: dict, path: tuple[str, ...], value: Any, where: str = "") -> None:
    """tree[path] = value, making the mappings on the way (an empty `resources:` line is
    null: one); SpecError naming the field when one on the way is no mapping."""
    for k, key in enumerate(path[:-1]):
        if tree.get(key) is None:
            tree[key] = {}
        if not isinstance(tree[key], dict):
            field = ".".join((where, *path[:k + 1]) if where else path[:k + 1])
            raise SpecError(f"invalid job spec:\n  {field}: {tree[key]!r} is not a mapping, "
                            f"so a flag cannot set {'.'.join(path[k + 1:])} in it (write "
                            f"{path[k]}: {{...}})")
        tree = tree[key]
    tree[path[-1]] = value


def merge_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Apply non-None CLI overrides (keys of TASK_FLAGS / JOB_FLAGS) to a raw spec dict."""
    raw = dict(raw)
    if overrides.get("tile_overlap") is not None and overrides.get("tiles") is None:
        # An overlap alone would turn tiling on with a grid nobody chose.
        tasks = raw.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and t.get("tiles")
                                                  for t in tasks):
            raise SpecError("--tile-overlap sets the overlap of tiles; give the grid too "
                            "(--tiles 2x2), or tiles: in the spec")
    # PARTIAL_FLAGS last: which tasks they apply to follows from --task and --family.
    given = sorted(((flag, value) for flag, value in overrides.items() if value is not None),
                   key=lambda item: item[0] in PARTIAL_FLAGS)
    for flag, value in given:
        if flag == "track":
            # --track turns tracking on with the spec's settings, or the defaults.
            for task in _partial_flag_tasks(raw, flag):
                if value and not task.get("track"):
                    task["track"] = {}
        elif flag == "subset":
            # --subset sets the size ({count} or {fraction}), keeping the spec's seed.
            _set(raw, JOB_FLAGS[flag], {**_subset_seed(raw), **value})
        elif flag in JOB_FLAGS:
            _set(raw, JOB_FLAGS[flag], value)
        elif flag in TASK_FLAGS:
            tasks = _partial_flag_tasks(raw, flag) if flag in PARTIAL_FLAGS else _flag_tasks(raw)
            for task in tasks:
                k = next(k for k, t in enumerate(raw["tasks"]) if t is task)
                _set(task, TASK_FLAGS[flag], value, f"tasks.{k}")
        else:
            raise KeyError(f"unknown override {flag!r}")
    return raw


def _subset_seed(raw: dict) -> dict:
    """{"seed": the spec's input.subset.seed}, or {} when it sets none."""
    subset = (raw.get("input") or {}).get("subset") if isinstance(raw.get("input"), dict) else None
    return {"seed": subset["seed"]} if isinstance(subset, dict) and "seed" in subset else {}


def _partial_flag_tasks(raw: dict, flag: str) -> list[dict]:
    """The tasks a PARTIAL_FLAGS flag applies to; SpecError when the job has none."""
    takes, which = PARTIAL_FLAGS[flag]
    tasks = [task for task in _flag_tasks(raw) if takes(task)]
    if not tasks:
        raise SpecError(f"--{flag.replace('_', '-')} applies to {which} tasks, and the job "
                        f"has none")
    return tasks


def _flag_tasks(raw: dict) -> list[dict]:
    """The tasks task-level flags apply to: every task of the spec, or a new single task."""
    tasks = raw.setdefault("tasks", [{}])
    if not isinstance(tasks, list) or not tasks:
        tasks = raw["tasks"] = [{}]
    return [task for task in tasks if isinstance(task, dict)]


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None,
                            flags: bool = False) -> str:
    """One line per problem: `field.path: message`, or the message alone when it is about
    the whole (a check across fields, whose message names them). model: the class that was
    validated; an unknown field is then answered with the likeliest one meant, or the
    valid ones. flags: a required field left out is answered with the command-line flag
    that gives it (a spec of `labeler run` or `labeler serve`, not an HTTP request)."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and model is not None:
            msg = _unknown_field(str(e["loc"][-1]), _fields_at(model, e["loc"][:-1])) or msg
        elif e["type"] == "missing" and flags:
            msg += _missing_flag(e["loc"])
        lines.append(f"{where}: {msg}" if where else msg)
    return "invalid job spec:\n  " + "\n  ".join(lines)


# A required field left out -> the flags that give it (`labeler run` and `labeler serve`,
# whose models take the task flags): a job given by flags names no spec field.
_WHOLE_FLAGS = {("input",): "give --input, or input: in a spec file",
                ("output",): "give --output, or output: in a spec file",
                ("tasks",): "give --task, --family and --model, or tasks: in a spec file",
                ("tasks", "model"): "--family and --model",
                ("models",): "give --task, --family and --model, or models: in a config file",
                ("models", "model"): "--family and --model"}


def _missing_flag(loc: tuple) -> str:
    """' (--model)': the flag that sets the missing field at `loc`, or ''."""
    path = tuple(str(p) for p in loc if not isinstance(p, int))
    if path in _WHOLE_FLAGS:
        return f" ({_WHOLE_FLAGS[path]})"
    flags = [flag for flag, where in JOB_FLAGS.items() if where == path]
    if path[:1] in (("tasks",), ("models",)):
        flags += [flag for flag, where in TASK_FLAGS.items() if where == path[1:]]
    return f" (--{flags[0].replace('_', '-')})" if flags else ""


def _fields_at(model: type[BaseModel], path: tuple) -> list[str] | None:
    """The field names of the model found at `path` (field names and list indices) from
    `model`, or None where the path leaves the models."""
    for part in path:
        if isinstance(part, int):
            continue  # an item of a list: the list's model
        field = model.model_fields.get(str(part))
        found = field and _model_in(field.annotation)
        if found is None:
            return None
        model = found
    return list(model.model_fields)


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: itself, or inside Optional, list, dict..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_field(name: str, valid: list[str] | None) -> str | None:
    """'unknown field; did you mean "threshold"?', or the valid fields when none is close."""
    if not valid:
        return None
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field; valid fields here: {', '.join(valid)}"


def yaml_error_text(err: yaml.YAMLError, path: str | Path) -> str:
    """PyYAML's message about the file at `path`, which it calls "<unicode string>", and
    what to do about a tab, which YAML refuses as indentation."""
    text = str(err).replace('"<unicode string>"', repr(str(path)))
    if "found character '\\t'" in text:
        text += "\n(YAML indents with spaces, not tabs: replace the tabs with spaces)"
    return text


def load_job_spec(path: str | Path | None = None, **overrides: Any) -> JobSpec:
    """Read an optional YAML spec, apply CLI overrides, validate. Raises SpecError."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SpecError(f"spec file {str(path)!r} does not exist") from None
        except yaml.YAMLError as err:
            raise SpecError(f"spec file {str(path)!r} is not valid YAML: "
                            f"{yaml_error_text(err, path)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"spec file {str(path)!r} must hold a mapping at the top level")
    raw = merge_overrides(raw, overrides)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, JobSpec, flags=True)) from None
