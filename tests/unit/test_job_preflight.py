"""Checks a job passes before any work (labeler.jobs.runner): a model that cannot load is
refused naming the task's field (otherwise every actor fails to start and every row becomes
an error row blaming a dead worker, exit 0, the cause only in Ray's logs); an output that
holds the input, or lies inside the folder it lists, is refused (--overwrite deleted the
inputs)."""

import http.server
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from labeler.config import SpecError, load_job_spec
from labeler.jobs.runner import run_job
from labeler.storage import model_source_problem


def test_sources_that_cannot_be_a_model_say_why(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert model_source_problem(str(model)) == (
        f"{str(model)!r} holds no config.json (a model folder's)")
    (model / "config.json").write_text("{}")
    assert model_source_problem(str(model)) is None
    assert model_source_problem(str(tmp_path / "missing")) == (
        f"no such model folder {str(tmp_path / 'missing')!r}")
    assert model_source_problem("./models/owlv2") == "no such model folder './models/owlv2'"
    # Offline (the tests' HF_HUB_OFFLINE=1), a hub id must be in the hub cache.
    assert "is not in the hub cache, and HF_HUB_OFFLINE is set" in model_source_problem(
        "google/owlv2-base-patch16-ensembl")
    assert "is neither a folder nor a hub id" in model_source_problem("not a repo id!")


def test_a_job_with_a_model_that_cannot_load_is_refused_before_any_work(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded before the check")
    for dry_run in (True, False):
        spec = load_job_spec(None, input=str(tmp_path / "images"), output=str(tmp_path / "out"),
                             task="detect", family="owlv2", labels=["cat"],
                             model=str(tmp_path / "no-such-model"))
        with pytest.raises(SpecError, match=re.escape(
                f"tasks.0.model.source: no such model folder {str(tmp_path / 'no-such-model')!r}")):
            run_job(spec, progress=False, dry_run=dry_run)
        assert not (tmp_path / "out").exists()  # nothing written, Ray never started


def test_a_model_of_another_family_is_refused_naming_its_family(tmp_path):
    """An OWLv2 checkpoint given as a Florence-2 model failed on every worker, after Ray
    started, with hundreds of lines of transformers' config validation and exit 1."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded before the check")
    model = tmp_path / "owlv2"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "owlv2"}')
    assert model_source_problem(str(model), family="owlv2") is None
    assert model_source_problem(str(model)) is None  # no family: not compared
    spec = load_job_spec(None, input=str(tmp_path / "images"), output=str(tmp_path / "out"),
                         task="detect", family="florence2", labels=["cat"], model=str(model))
    with pytest.raises(SpecError, match=re.escape(
            f"tasks.0.model.source: {str(model)!r} holds a model of family owlv2 (model_type "
            f"'owlv2'), not florence2: give model.family owlv2 (--family owlv2), or a "
            f"florence2 model")):
        run_job(spec, progress=False, dry_run=True)
    assert not (tmp_path / "out").exists()
    # A model_type of no family is transformers' to judge (an OWL-ViT for OWLv2, say).
    (model / "config.json").write_text('{"model_type": "owlvit"}')
    assert model_source_problem(str(model), family="owlv2") is None


@pytest.mark.parametrize("files, media, says", [
    (["a.mp4", "b.MOV"], "image",
     "no image files found under {in!r}; it holds 2 video file(s): add --media video "
     "(input.media: video)"),
    (["a.jpg"], "video",
     "no video files found under {in!r}; it holds 1 image file(s): leave out --media video "
     "(input.media: image)"),
    (["notes.txt", "README"], "image",
     "no image files found under {in!r}; it holds 2 other file(s) (.txt, no extension), "
     "and images are files ending in .jpg"),
    ([".a.jpg"], "image",
     "no image files found under {in!r}; names starting with '.' (hidden files and "
     "folders) are skipped"),
])
def test_an_input_without_inputs_says_what_it_holds(tmp_path, files, media, says):
    """A folder of videos run without --media video said only 'no image files found'."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"x")
    spec = load_job_spec(None, input=str(folder), output=str(tmp_path / "out"), media=media,
                         task="detect", family="owlv2", labels=["cat"], model=str(tmp_path))
    with pytest.raises(SpecError, match="^" + re.escape(
            "input.path: " + says.replace("{in!r}", repr(str(folder))))):
        run_job(spec, progress=False, dry_run=True)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A hub that has no model: what huggingface.co answers for a mistyped id."""

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_hub_model_the_hub_cannot_serve_is_refused_before_any_work(tmp_path):
    """Online (HF_HUB_OFFLINE unset) on a machine without internet, or with a mistyped hub
    id, every worker retried the download for minutes, Ray started, nothing said why."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded before the check")
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    command = [sys.executable, "-m", "labeler.cli", "run", "--input", str(tmp_path / "images"),
               "--output", str(tmp_path / "out"), "--task", "detect", "--family", "owlv2",
               "--labels", "cat", "--model", "google/owlv2-base-patch16-ensembl", "--dry-run"]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub-cache")}
    try:
        cases = [(hub.server_address[1], "no hub model 'google/owlv2-base-patch16-ensembl' on "
                  "http://127.0.0.1:{port} (a typo? a private one needs HF_TOKEN)"),
                 (closed.getsockname()[1], "hub model 'google/owlv2-base-patch16-ensembl' is "
                  "not in the hub cache, and http://127.0.0.1:{port} cannot be reached (")]
        for port, says in cases:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                    env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
            assert result.returncode == 2, result.stderr[-3000:]
            assert f"error: tasks.0.model.source: {says.format(port=port)}" in result.stderr
            assert "Traceback" not in result.stderr
            assert not (tmp_path / "out").exists()  # before Ray, before the output
    finally:
        hub.shutdown()
        closed.close()


def test_an_output_that_is_a_file_is_refused_naming_the_field(tmp_path):
    """It said 'cannot write the output to ...: [Errno 20] Cannot list directory ...
    Detail: [errno 20] Not a directory', pyarrow's words."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded before the check")
    (tmp_path / "labels.parquet").write_bytes(b"a file")
    spec = load_job_spec(None, input=str(tmp_path / "images"),
                         output=str(tmp_path / "labels.parquet"), task="detect",
                         family="owlv2", labels=["cat"], model=str(tmp_path))
    with pytest.raises(SpecError, match="^" + re.escape(
            f"output.path: {str(tmp_path / 'labels.parquet')!r} is a file; give a folder "
            f"(made if missing) or an s3:// prefix") + "$"):
        run_job(spec, progress=False, dry_run=True)
    assert (tmp_path / "labels.parquet").read_bytes() == b"a file"


@pytest.mark.parametrize("input_path, output_path, says", [
    ("data", "data", "holds the input"),
    ("data/images", "data", "holds the input"),
    ("data/images/", "./data/../data", "holds the input"),
    ("data/*.png", "data", "holds the input"),
    ("data/images", "data/images/labels", "lies inside the input"),
    ("data/**", "data/labels", "lies inside the input"),
    ("s3://b/images", "s3://b/images/labels", "lies inside the input"),
    ("s3://b/images/", "s3://b", "holds the input"),
])
def test_an_output_that_holds_the_input_or_lies_inside_it_is_refused(
        tmp_path, monkeypatch, input_path, output_path, says):
    """--overwrite deleted the input images with the output (input == output, or inside
    it); an output inside the input folder is listed as input by the next run."""
    from labeler.jobs.runner import check_input_apart_from_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(SpecError, match=re.escape(f"output.path: {output_path!r} {says}")):
        check_input_apart_from_output(input_path, output_path)


@pytest.mark.parametrize("input_path, output_path", [
    ("data/images", "data/labels"), ("data/images", "data/images-labels"),
    ("data/manifest.jsonl", "data/labels"), ("s3://b/images", "s3://b/labels"),
    ("s3://b/m.parquet", "s3://b/labels"), ("data/images", "s3://b/data/images"),
])
def test_outputs_beside_the_input_are_fine(tmp_path, monkeypatch, input_path, output_path):
    from labeler.jobs.runner import check_input_apart_from_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "manifest.jsonl").write_text("")
    check_input_apart_from_output(input_path, output_path)


def test_overwrite_into_the_input_folder_deletes_nothing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"an input")
    spec = load_job_spec(None, input=str(images), output=str(images), overwrite=True,
                         task="detect", family="owlv2", labels=["cat"], model="m")
    with pytest.raises(SpecError, match="holds the input"):
        run_job(spec, progress=False)
    assert (images / "a.png").read_bytes() == b"an input"



def test_a_dry_run_refuses_a_local_output_the_run_could_not_write(tmp_path):
    """The run would fail at its first write (a file on the output's path): the dry run
    says so too, instead of `output: ... (nothing committed yet)`."""
    from labeler.storage import StorageError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "afile").write_text("")
    spec = load_job_spec(None, input=str(tmp_path / "images"),
                         output=str(tmp_path / "afile" / "sub"), task="detect",
                         family="owlv2", labels=["cat"], model=str(model))
    with pytest.raises(StorageError, match=re.escape(
            f"cannot write the output to {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} "
            f"is a file, not a folder")):
        run_job(spec, progress=False, dry_run=True)
    ok = spec.model_copy(update={"output": spec.output.model_copy(
        update={"path": str(tmp_path / "new" / "out")})})
    assert run_job(ok, progress=False, dry_run=True).dry_run
