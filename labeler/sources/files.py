"""Image files from a local folder (recursive), a glob, or an s3:// prefix.

The listing is sorted, so ids, shard numbers and output file names are the same on every
run over the same inputs: that is what makes output names deterministic and jobs resumable.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from labeler.config import IMAGE_EXTENSIONS
from labeler.storage import filesystem_for, is_s3


@dataclass(frozen=True)
class InputItem:
    """id: stable, the path relative to the input root; uri: where to read it; shard: the
    output file it lands in."""

    id: str
    uri: str
    shard: int


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_image_uris(path: str) -> tuple[str, list[str]]:
    """(root, sorted URIs of the image files under `path`). Folders and prefixes are
    searched recursively for known image extensions; a glob keeps every file it matches."""
    if not is_s3(path) and glob.has_magic(path):
        root = os.path.abspath(path.split("*")[0].split("?")[0].split("[")[0])
        root = root if os.path.isdir(root) else os.path.dirname(root)
        return root, sorted(os.path.abspath(p) for p in glob.glob(path, recursive=True)
                            if os.path.isfile(p))
    if not is_s3(path) and os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), [os.path.abspath(path)]
    fs, root = filesystem_for(path)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    scheme = "s3://" if is_s3(path) else ""
    uris = sorted(scheme + i.path for i in infos
                  if i.type == pafs.FileType.File and _has_image_extension(i.path))
    return scheme + root, uris


def plan_inputs(path: str, files_per_shard: int) -> list[InputItem]:
    """Every input with its id and shard number, in listing order."""
    root, uris = list_image_uris(path)
    prefix = root.rstrip("/") + "/"
    return [InputItem(id=uri.removeprefix(prefix), uri=uri, shard=i // files_per_shard)
            for i, uri in enumerate(uris)]
