"""Inputs -> an InputPlan (rows {id, uri, shard, prompt?} plus carried columns), planned on
the driver before any work starts.

`path` may be a folder, a glob or an s3:// prefix (every image file under it is an input,
and every `.tar` under it is a WebDataset shard whose image members are inputs), or a
Parquet / JSONL manifest (or a folder / prefix holding only manifests).
"""

from __future__ import annotations

from labeler.sources.files import list_files, relative_id, select_images
from labeler.sources.items import InputItem, InputPlan, assign_shards
from labeler.sources.manifest import is_manifest, manifest_samples
from labeler.sources.webdataset import is_tar, tar_samples

__all__ = ["InputItem", "InputPlan", "plan_source"]


def plan_source(path: str, files_per_shard: int) -> InputPlan:
    """Every input of `path` with a stable id and its shard number, in a deterministic order
    (sorted files; tar members and manifest rows in their stored order)."""
    root, files = list_files(path)
    manifests = [f for f in files if is_manifest(f)]
    if manifests and len(manifests) == len(files):
        entries = [e for m in manifests for e in manifest_samples(m)]
    else:
        wanted = set(select_images(path, files))
        entries = []
        for uri in files:
            if uri in wanted:
                entries.append((relative_id(root, uri), uri, None, {}))
            elif is_tar(uri):
                entries.extend(tar_samples(uri, relative_id(root, uri)))
    try:
        return assign_shards(entries, files_per_shard)
    except ValueError as err:
        from labeler.config import SpecError

        raise SpecError(f"input.path: {err} (in {path})") from None
