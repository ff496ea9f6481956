"""Files from a local folder (recursive), a glob, or an s3:// prefix.

The listing is sorted, so ids, shard numbers and output file names are the same on every
run over the same inputs: that is what makes output names deterministic and jobs resumable.
"""

from __future__ import annotations

import glob
import os
import posixpath

import pyarrow.fs as pafs

from labeler.config import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, SpecError
from labeler.sources.items import InputItem, assign_shards
from labeler.sources.manifest import MANIFEST_EXTENSIONS
from labeler.sources.webdataset import is_tar
from labeler.storage import filesystem_for, is_s3, storage_error

__all__ = ["InputItem", "list_files", "list_image_uris", "plan_inputs", "select_images",
           "select_videos"]


def list_files(path: str) -> tuple[str, list[str]]:
    """(root, sorted URIs of every file under `path`): a folder or prefix searched
    recursively, a glob, or a single file. An s3:// location that cannot be listed (no such
    bucket, credentials refused, endpoint not answering) raises StorageError; a prefix with
    no objects is an empty listing. A local folder's links are followed, each folder once
    (a link to a folder above would list its files again and again), and a link to nothing
    is listed (its input becomes an error row). Hidden files and folders (a name starting
    with `.`: macOS's `._photo.jpg` and `.DS_Store`, `.thumbnails/`, `.git/`) are not listed
    under a folder or prefix, as a glob's `*` does not match them (and as Hugging Face
    datasets and webdataset skip them). SpecError for a local file name that is not UTF-8
    (it could be no id)."""
    if not is_s3(path) and glob.has_magic(path):
        root = os.path.abspath(path.split("*")[0].split("?")[0].split("[")[0])
        root = root if os.path.isdir(root) else os.path.dirname(root)
        return root, _utf8(sorted(os.path.abspath(p) for p in glob.glob(path, recursive=True)
                                  if os.path.isfile(p) or _dangling(p)))
    if not is_s3(path) and os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), _utf8([os.path.abspath(path)])
    if not is_s3(path) and os.path.isdir(path):
        root = os.path.abspath(path).rstrip("/") or "/"
        try:
            return root, _utf8(sorted(_walk(root)))
        except OSError as err:  # a folder that cannot be read
            raise storage_error(path, "list", err) from None
    fs, root = filesystem_for(path)
    root = root.rstrip("/")
    scheme = "s3://" if is_s3(path) else ""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError:
        infos = []
    except OSError as err:
        raise storage_error(path, "list", err) from None
    files = [scheme + i.path for i in infos if i.type == pafs.FileType.File
             and not _hidden(i.path[len(root):])]
    if is_s3(path) and not files:
        # A single object named by the URI itself.
        try:
            if fs.get_file_info(root).type == pafs.FileType.File:
                files = [scheme + root]
                root = root.rpartition("/")[0]
        except OSError as err:
            raise storage_error(path, "read", err) from None
    return scheme + root, sorted(files)


def names_one_file(path: str) -> bool:
    """Whether `path` names one file (a local file, or an s3:// key with the suffix of an
    input file: image, video, manifest, tar), not a folder, prefix or glob."""
    if is_s3(path):
        suffix = posixpath.splitext(path.rstrip("/"))[1].lower()
        return suffix in (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS, *MANIFEST_EXTENSIONS, ".tar")
    return os.path.isfile(path)


def _walk(root: str) -> list[str]:
    """Every file under `root`, links followed, each real folder entered once, and every
    link to nothing (os.scandir's entries know their type: one stat per link only)."""
    seen: set[str] = set()
    files, folders = [], [root]
    while folders:
        folder = folders.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a loop, or a folder already listed through another link
            continue
        seen.add(real)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):  # hidden (list_files)
                    continue
                if entry.is_dir():  # follows links
                    folders.append(entry.path)
                elif entry.is_file() or entry.is_symlink():  # a link to nothing too
                    files.append(entry.path)
    return files


def _hidden(relative: str) -> bool:
    """Whether a path below the listed root has a hidden part (a name starting with `.`)."""
    return any(part.startswith(".") for part in relative.split("/") if part)


def _dangling(path: str) -> bool:
    """A link whose target does not exist."""
    return os.path.islink(path) and not os.path.exists(path)


def _utf8(paths: list[str]) -> list[str]:
    """`paths`; SpecError naming the first whose name is not UTF-8 (Python holds its bytes
    as surrogates, which no id, Parquet file or JSON can carry)."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(f"input.path: the file name {os.fsencode(path)!r} is not UTF-8; "
                            f"rename it (convmv -f latin1 -t utf8 does whole folders)") from None
    return paths


def list_image_uris(path: str) -> tuple[str, list[str]]:
    """(root, sorted URIs of the image files under `path`). Folders and prefixes are
    searched recursively for known image extensions; a glob keeps every file it matches."""
    root, uris = list_files(path)
    return root, select_images(path, uris)


def select_images(path: str, uris: list[str]) -> list[str]:
    """The image files of a listing of `path`: those with an image extension, or every
    file but tars when `path` is a glob or names the one file itself."""
    return _select(path, uris, IMAGE_EXTENSIONS)


def select_videos(path: str, uris: list[str]) -> list[str]:
    """The video files of a listing of `path`, as select_images picks images."""
    return _select(path, uris, VIDEO_EXTENSIONS)


def _select(path: str, uris: list[str], extensions: tuple[str, ...]) -> list[str]:
    if (glob.has_magic(path) and not is_s3(path)) or _names_one_file(path, uris):
        return [u for u in uris if not is_tar(u)]  # a tar is a WebDataset shard of inputs
    return [u for u in uris if u.lower().endswith(extensions)]


def _names_one_file(path: str, uris: list[str]) -> bool:
    """Whether `path` is itself the one file listed (kept whatever its extension)."""
    named = path if is_s3(path) else os.path.abspath(path)
    return uris == [named]


def relative_id(root: str, uri: str) -> str:
    """The stable id of a file: its path relative to the input root."""
    return uri.removeprefix(root.rstrip("/") + "/")


def plan_inputs(path: str, files_per_shard: int) -> list[InputItem]:
    """Every image file with its id and shard number, in listing order."""
    root, uris = list_image_uris(path)
    return assign_shards([(relative_id(root, u), u, None, {}) for u in uris],
                         files_per_shard).items
