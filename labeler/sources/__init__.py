"""Inputs -> an InputPlan (rows {id, uri, shard, prompt?} plus carried columns), planned on
the driver before any work starts.

`path` may be a folder, a glob or an s3:// prefix (every image file under it is an input,
and every `.tar` under it is a WebDataset shard whose image members are inputs), or a
Parquet / JSONL manifest (or a folder / prefix holding only manifests). In a folder or
prefix (and beside an image a glob or a file path names), a `.txt` file with the image's
stem (`cat.jpg`, `cat.txt`) is its caption: the column `caption`, as a WebDataset `.txt`
member is. With media "video" the same holds for video files and video members
(config.VIDEO_EXTENSIONS) instead of images.
"""

from __future__ import annotations

import glob
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

from labeler.config import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, SpecError, SubsetSpec
from labeler.sources.files import (list_files, names_one_file, relative_id, select_images,
                                   select_videos)
from labeler.sources.items import InputItem, InputPlan, assign_shards, check_unique_ids
from labeler.sources.manifest import is_manifest, manifest_samples
from labeler.sources.subset import choose_subset
from labeler.sources.webdataset import is_tar, tar_samples
from labeler.storage import is_s3, read_bytes, storage_error

# Sidecar captions are small objects read during planning; on S3 each is one GET, so they are
# fetched this many at a time (latency-bound, not bandwidth-bound).
CAPTION_READERS = 16

__all__ = ["InputItem", "InputPlan", "plan_source"]


def plan_source(path: str, files_per_shard: int, media: str = "image",
                subset: SubsetSpec | None = None) -> InputPlan:
    """Every input of `path` with a stable id and its shard number, in a deterministic order
    (sorted files; tar members and manifest rows in their stored order). media: "image" or
    "video", which files of a listing are inputs (a manifest's rows are, either way).
    subset: keep only its inputs (labeler.sources.subset), in the same order, before shards
    are numbered; `listed` then says how many there were."""
    root, files = list_files(path)
    manifests = [f for f in files if is_manifest(f)]
    files_beside: set[str] = set()  # listed input files, which a .txt beside may caption
    if manifests and len(manifests) == len(files):
        # Rows without ids are named by the manifest's path under the root, so that
        # train/0000.parquet and test/0000.parquet name theirs apart.
        entries = [e for m in manifests for e in manifest_samples(m, relative_id(root, m))]
    else:
        video = media == "video"
        wanted = set((select_videos if video else select_images)(path, files))
        entries = []
        for uri in files:
            if uri in wanted:
                entries.append((relative_id(root, uri), uri, None, {}))
            elif is_tar(uri):
                entries.extend(tar_samples(uri, relative_id(root, uri),
                                           VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS))
        files_beside = wanted
    listed = None
    if subset is not None:
        _check(check_unique_ids, entries, path)  # in all of them, as the whole job would
        listed = len(entries)
        chosen = choose_subset([e[0] for e in entries], count=subset.count,
                               fraction=subset.fraction, seed=subset.seed)
        entries = [entries[k] for k in chosen]
    if files_beside:
        # After the subset: on S3 each caption is a GET, and a trial of 500 inputs should
        # not read a million of them.
        captions = sidecar_captions(files, {uri for _, uri, _, _ in entries
                                            if uri in files_beside},
                                    whole_folders=not _names_files(path))
        for _, uri, _, meta in entries:
            if uri in captions:
                meta["caption"] = captions[uri]
    plan = _check(assign_shards, entries, path, files_per_shard)
    plan.listed = listed
    return plan


def no_inputs_hint(path: str, media: str = "image") -> str:
    """What `path` holds instead of inputs of `media`, and what to do, for the error of a
    listing with none: the other media's files (a folder of videos without --media video),
    the kinds of files it does hold, or a local folder's hidden files, which are skipped."""
    try:
        _, files = list_files(path)
    except SpecError:
        return ""
    other, flag = (("image", "leave out --media video (input.media: image)") if media == "video"
                   else ("video", "add --media video (input.media: video)"))
    others = (select_images if media == "video" else select_videos)(path, files)
    if others:
        return f"; it holds {len(others)} {other} file(s): {flag}"
    wanted = ", ".join(IMAGE_EXTENSIONS if media == "image" else VIDEO_EXTENSIONS)
    if files:
        kinds = sorted({posixpath.splitext(f)[1].lower() or "no extension" for f in files})
        return (f"; it holds {len(files)} other file(s) ({', '.join(kinds[:8])}), "
                f"and {media}s are files ending in {wanted}")
    if not is_s3(path) and os.path.isdir(path) and any(
            name.startswith(".") for name in os.listdir(path)):
        return "; names starting with '.' (hidden files and folders) are skipped"
    return ""


def _names_files(path: str) -> bool:
    """Whether `path` lists only the files it names (a glob, a single file), not whole
    folders."""
    return (not is_s3(path) and glob.has_magic(path)) or names_one_file(path)


def _check(function, entries: list, path: str, *args):
    """function(entries, *args), its ValueError raised as a SpecError naming input.path."""
    try:
        return function(entries, *args)
    except ValueError as err:
        raise SpecError(f"input.path: {err} (in {path})") from None


def sidecar_captions(files: list[str], inputs: set[str],
                     whole_folders: bool = True) -> dict[str, str]:
    """{input uri: the text of the `.txt` file with the same stem in the same folder},
    stripped, for the inputs that have one. files: the listing; whole_folders: it holds
    every file of the inputs' folders (False for a glob or a single file, which name only
    the images: each input's `<stem>.txt` is then looked for itself). An unreadable caption
    file raises StorageError, one that is not UTF-8 text SpecError (before any work
    starts)."""
    texts = {posixpath.splitext(f)[0]: f for f in files if f.lower().endswith(".txt")}
    pairs = {uri: texts[posixpath.splitext(uri)[0]] for uri in inputs
             if posixpath.splitext(uri)[0] in texts}
    unlisted = [] if whole_folders else [uri for uri in inputs if uri not in pairs]
    if not pairs and not unlisted:
        return {}

    def read(txt: str) -> str | None:
        try:
            data = read_bytes(txt)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise storage_error(txt, "read the caption", err) from None
        try:
            return data.decode("utf-8-sig").strip()  # a byte-order mark is no caption text
        except UnicodeDecodeError as err:
            raise SpecError(f"input.path: the caption file {txt} is not UTF-8 text "
                            f"({err.reason} at byte {err.start}); save it as UTF-8") from None

    pairs.update({uri: posixpath.splitext(uri)[0] + ".txt" for uri in unlisted})
    with ThreadPoolExecutor(CAPTION_READERS) as pool:
        texts_read = dict(zip(pairs, pool.map(read, pairs.values())))
    return {uri: text for uri, text in texts_read.items() if text is not None}
