"""`labeler track`: link a video job's boxes into tracks again, with other settings (or for
the first time), without labeling again, into a new output that `labeler run` with those
settings would have written and resumes.

    1. the job output (labeler.export.rows.JobOutput), its _job.json identity, and the task:
       its stored `track`, with the settings given over it (checked as a spec's)
    2. the files of the job's tasks (part files, reports) copied to --out as they are, except
       the task's part files: each read whole (a shard holds whole videos), linked
       (add_track_ids), each row's `parameters` given the new `track` (as a job writes it),
       written; what else the output holds (a preview, notes) is not copied
    3. _job.json with the task's `track` in the identity and that identity's fingerprint;
       _SUCCESS, when the job had finished, with the tracks counted, written last

Nothing is written before the task and the settings are accepted. Tuning the tracker
(`labeler eval --mot` after each try) costs a read and a write of the task, not a GPU job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from labeler.config import TRACKED_TASKS, SpecError, TrackingSpec, format_validation_error
from labeler.export.rows import JobOutput, TaskFolder
from labeler.export.target import Target
from labeler.jobs.identity import fingerprint
from labeler.sinks.parquet import MANIFEST_FILE, SUCCESS_FILE
from labeler.storage import storage_error
from labeler.tracking.rows import add_track_ids, count_tracks, with_track_parameters



@dataclass(frozen=True)
class TrackOptions:
    """What `labeler track` was asked: output: the job output; out: where the tracked copy
    goes (empty, or overwrite); task: the task folder (None: the only one with boxes);
    settings: TrackingSpec fields given, over the task's stored ones."""

    output: str
    out: str
    task: str | None = None
    settings: dict = field(default_factory=dict)
    overwrite: bool = False


@dataclass
class TrackSummary:
    task: str
    spec: TrackingSpec
    files: int
    tracks: int
    output: str

    def lines(self) -> list[str]:
        return [f"task: {self.task}, track: {json.dumps(self.spec.model_dump())}",
                f"linked {self.files} files: {self.tracks} tracks",
                f"output: {self.output}"]


def run_track(options: TrackOptions) -> TrackSummary:
    """Write the tracked copy (module docstring); SpecError when it cannot be done as asked,
    StorageError when a location cannot be used."""
    job = JobOutput(options.output)
    folder = job.pick(options.task)
    manifest = _manifest(job)
    if folder.name not in manifest["tasks"]:  # a folder put there, a fused task say
        raise SpecError(f"{folder.name!r} is no task of the job that wrote {job.uri!r} (its "
                        f"{MANIFEST_FILE} names {', '.join(manifest['tasks'])}): choose one of "
                        f"them with --task")
    k = manifest["tasks"].index(folder.name)
    identity = manifest["identity"]
    stored = identity["tasks"][k].get("track") or {}
    spec = _spec(folder, stored, options.settings)
    _check_frames(job, folder, identity.get("input", {}).get("media", "image"))

    target = Target(options.out)
    target.check_empty(options.overwrite, job.uri)
    target.clear()
    tracks = 0
    try:
        for path in _files(job, manifest["tasks"]):
            relative = path[len(job.path) + 1:]
            if path in folder.files:
                rows = add_track_ids(pq.read_table(path, filesystem=job.fs), spec)
                tracks += count_tracks(rows)
                target.write(relative, _parquet_bytes(with_track_parameters(rows, spec)))
            else:
                with job.fs.open_input_stream(path) as f:
                    target.write(relative, f.read())
        identity["tasks"][k]["track"] = spec.model_dump(exclude_defaults=True)
        manifest["fingerprint"] = fingerprint(identity)
        target.write(MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        if job.finished:
            with job.fs.open_input_stream(f"{job.path}/{SUCCESS_FILE}") as f:
                summary = json.loads(f.read())
            summary["tracks"] = {**(summary.get("tracks") or {}), folder.name: tracks}
            summary["output"] = target.uri  # this copy, not the job output it came from
            summary["tasks"] = [_with_tracking(line, folder.name, spec)
                                for line in summary.get("tasks") or []]
            with target.final(SUCCESS_FILE) as out:
                out.write(json.dumps(summary, indent=2).encode())
    except OSError as err:
        raise storage_error(job.uri, "copy the job output", err) from None
    return TrackSummary(folder.name, spec, len(folder.files), tracks, target.uri)


def _with_tracking(line: str, task: str, spec: TrackingSpec) -> str:
    """A summary's task line (labeler.jobs.runner: '<task>: ...; track {...}') with the
    tracked task's settings the ones this copy was linked with."""
    if not line.startswith(f"{task}: "):
        return line
    return f"{line.split('; track {')[0]}; {spec.summary_text()}"


def _manifest(job: JobOutput) -> dict:
    try:
        manifest = job.manifest()
    except OSError:
        manifest = None
    if manifest is None:
        raise SpecError(f"{job.uri!r} holds no readable {MANIFEST_FILE}, so it is not a "
                        f"labeler job output as written")
    if not isinstance(manifest.get("identity"), dict):
        raise SpecError(f"{job.uri!r} was written by an older labeler (its {MANIFEST_FILE} "
                        f"holds no job identity): run the job again with --track")
    return manifest


def _spec(folder: TaskFolder, stored: dict, settings: dict) -> TrackingSpec:
    """The task's stored `track` with `settings` over it; SpecError naming a bad field (by
    its flag when given)."""
    if folder.kind not in TRACKED_TASKS:
        raise SpecError(f"task {folder.name!r} is a {folder.kind} task; tracks link the boxes "
                        f"of {', '.join(TRACKED_TASKS)}")
    try:
        return TrackingSpec.model_validate({**stored, **settings})
    except ValidationError as err:
        text = format_validation_error(err).replace("invalid job spec", "invalid track settings")
        for name in settings:  # given as flags (the others are the stored ones)
            text = text.replace(f"\n  {name}:", f"\n  --{name.replace('_', '-')}:")
        raise SpecError(text) from None


def _check_frames(job: JobOutput, folder: TaskFolder, media: str) -> None:
    """The task labels video frames: some row without error has a frame_index. media: the
    job's input.media, which names what is wrong when every row is an error."""
    for path in folder.files:
        rows = pq.read_table(path, columns=["frame_index", "error"], filesystem=job.fs)
        labeled = rows.filter(pc.is_null(rows.column("error")))
        if labeled.num_rows:  # the first rows without error say whether they are frames
            if labeled.column("frame_index").null_count < labeled.num_rows:
                return
            break
    else:  # no row without error
        if media == "video":
            raise SpecError(f"task {folder.name!r} has no frame without an error (its rows are "
                            f"error rows): there are no boxes to link into tracks")
    raise SpecError(f"task {folder.name!r} labels no video frames; tracks link the boxes of "
                    f"a video job's frames (labeler run --media video)")


def _files(job: JobOutput, tasks: list[str]) -> list[str]:
    """The files of the job's tasks (labeler.sinks.parquet): each task folder's part files
    and reports (_report.json), not its staging files (.name.tmp) nor any folder in it;
    _job.json and _SUCCESS are written apart. What else the output holds (a preview, an
    export, notes) is no part of the job and stays behind."""
    files = []
    for task in tasks:
        infos = job.fs.get_file_info(pafs.FileSelector(f"{job.path}/{task}",
                                                       allow_not_found=True))
        files += [i.path for i in infos
                  if i.type == pafs.FileType.File and not i.base_name.startswith(".")]
    return sorted(files)


def _parquet_bytes(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink, compression="zstd")  # as the job's sink writes them
    return sink.getvalue().to_pybytes()
