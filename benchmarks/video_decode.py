"""Video decode and sampling throughput, and the memory of a video decode task.

Makes 1080p30 H.264 test videos with PyAV's libx264, a key frame every 2 s (as streaming
encoders set it), of textured moving content (a smooth random texture panning 2 px a frame
right and 1 down, plus a moving box: ~2 Mbit/s at preset veryfast, ~9 at ultrafast, real
video's range): `--minutes` at preset veryfast (CABAC, B-frames: what real files cost to
decode) for the rates, and 10 minutes at ultrafast (fast to make) for the memory figure.

Rates, on the first video, each in a fresh process so that its CPU time (user + sys of the
whole process, FFmpeg's threads included) is its own, with the environment of the job's
decode workers (jobs.video.DECODE_ENV); best of `--rounds`, modes alternating (the machine
may be shared):

    fps                         labeler.media.video.sample_video, Sampling fps=1 (it seeks
                                where that skips frames: SEEK_MIN_SKIP_S)
    fps-noseek                  the same with seeking off: decode every frame, keep 1 a second
    all                         Sampling "all" through the same code: every frame, RGB
    all-min-change              the same with min_change set (every frame still passes it):
                                the cost of comparing each frame's grey thumbnail
    all, glibc malloc defaults  the same without the decode workers' DECODE_ENV
    pyav                        `for frame in container.decode(video=0):
                                     frame.to_ndarray(format="rgb24")`, PyAV's defaults
                                (slice threads, which a one-slice-per-frame stream cannot use)
    pyav-auto                   the same loop with stream.thread_type = "AUTO", as ours

Each prints frames out per wall second and per CPU second ("per core"), and seconds of video
per CPU second. Memory: the job's own decode stage (labeler.jobs.video.decoded_videos: Ray
Data map_batches over decode_video, one task per video) over the 10-minute video at 1 fps on
a local Ray; the task reads its process's memory (/proc/self/status, Linux) at each batch it
yields and sends it back in columns; the decode stage only, no model.

    .venv/bin/python benchmarks/video_decode.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

WIDTH, HEIGHT, FPS = 1920, 1080, 30
KEYINT = 2 * FPS  # a key frame every 2 s: what streaming encoders (x264 presets, YouTube) use
LONG_MINUTES = 10  # issue 4: peak memory while labeling a 10-minute 1080p video
MEMORY_LIMIT_GB = 1.5  # issue 4: per decode worker
BOX = 200  # side of the moving box, pixels
PAN = (2, 1)  # pixels the texture moves per frame (x, y)
# A mode with this suffix runs without the decode workers' malloc settings (glibc's defaults).
GLIBC_DEFAULTS = ", glibc malloc defaults"
MODES = ("fps", "fps-noseek", "all", "all-min-change", "all" + GLIBC_DEFAULTS, "pyav",
         "pyav-auto")
# A threshold the panning content always passes: every frame is kept, and so every frame pays
# for the min_change comparison, which is what all-min-change measures against all.
EVERY_FRAME_CHANGES = 1e-6


def _texture(height: int, width: int, cell: int, seed: int) -> np.ndarray:
    """(height, width) uint8: random values on a grid of `cell` pixels, bicubic between."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // cell + 1, width // cell + 1), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def encode(path: Path, seconds: float, preset: str) -> float:
    """Write a test video (see the module docstring); returns the encoding time in seconds."""
    start = time.perf_counter()
    frames = round(seconds * FPS)
    # Texture periods: the pan wraps around after 160 frames.
    span_x, span_y = 160 * PAN[0], 160 * PAN[1]
    luma = (_texture(HEIGHT + span_y, WIDTH + span_x, 24, 0) // 2
            + _texture(HEIGHT + span_y, WIDTH + span_x, 6, 1) // 2)
    chroma = _texture(HEIGHT // 2 + span_y, WIDTH // 2 + span_x, 24, 2) // 2 + 64
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=FPS, options={
        "preset": preset, "x264-params": f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0"})
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    # x264 with frame threads, as ffmpeg's command line runs it: one slice per frame, the
    # usual case (PyAV's default, slice threads, would cut every frame into slices that a
    # slice-threaded decoder alone could spread over cores).
    stream.thread_type = "FRAME"
    for i in range(frames):
        dx, dy = (PAN[0] * i) % span_x, (PAN[1] * i) % span_y
        y = luma[dy:dy + HEIGHT, dx:dx + WIDTH].copy()
        bx, by = (i * 7) % (WIDTH - BOX), (i * 3) % (HEIGHT - BOX)
        y[by:by + BOX, bx:bx + BOX] = 235
        u = chroma[dy // 2:dy // 2 + HEIGHT // 2, dx // 2:dx // 2 + WIDTH // 2]
        v = chroma[::-1][dy // 2:dy // 2 + HEIGHT // 2, dx // 2:dx // 2 + WIDTH // 2]
        planes = np.concatenate([y, np.ascontiguousarray(u).reshape(HEIGHT // 4, WIDTH),
                                 np.ascontiguousarray(v).reshape(HEIGHT // 4, WIDTH)])
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = i
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    return time.perf_counter() - start


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mode: str, path: str) -> dict:
    """Frames out, wall and CPU seconds of one way of reading the video (in this process)."""
    from labeler.media.video import Sampling, probe, sample_video

    duration = probe(path).duration_s
    cpu0, t0 = _cpu_s(), time.perf_counter()
    frames = 0
    if mode.startswith("pyav"):
        with av.open(path) as container:
            if mode == "pyav-auto":
                container.streams.video[0].thread_type = "AUTO"
            for frame in container.decode(video=0):
                frame.to_ndarray(format="rgb24")
                frames += 1
    else:
        if mode == "all-min-change":
            sampling = Sampling("all", min_change=EVERY_FRAME_CHANGES)
        else:
            sampling = Sampling("all") if mode == "all" else Sampling("fps", fps=1.0)
        options = {"seek_min_skip_s": float("inf")} if mode == "fps-noseek" else {}
        for _ in sample_video(path, sampling, **options):
            frames += 1
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    return {"mode": mode, "frames": frames, "wall_s": wall, "cpu_s": cpu,
            "frames_per_s": frames / wall, "frames_per_cpu_s": frames / cpu,
            "video_s_per_cpu_s": duration / cpu}


def decode_stage_peak(path: str) -> dict:
    """The job's decode stage over one video on a local Ray; the decode worker's memory."""
    import ray

    from labeler.config import load_job_spec
    from labeler.jobs import video

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = load_job_spec(None, input=path, output=tempfile.mkdtemp(), media="video",
                         sample_fps=1.0, task="detect", family="owlv2", model="unused",
                         labels=["a box"])
    real = video.decode_video

    def measured(batch, **kwargs):
        before = _memory()  # the worker with Python, Ray, torch (jobs.stages imports it)
        for out in real(batch, **kwargs):
            now = _memory()  # at each yield: with a whole batch of frames made
            for key in MEMORY_KEYS:
                out[key] = np.full(len(out["id"]), now[key], np.int64)
                out[f"{key}_before"] = np.full(len(out["id"]), before[key], np.int64)
            yield out

    video.decode_video = measured  # the stage as jobs.video builds it, reporting memory
    start = time.perf_counter()
    ds = video.decoded_videos(spec.model_copy(update={"tasks": []}),
                              [{"id": "long.mp4", "uri": path, "shard": 0}])
    rows, peak, before = 0, dict.fromkeys(MEMORY_KEYS, 0), {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows += len(batch["id"])
        peak = {key: max(peak[key], int(batch[key].max())) for key in MEMORY_KEYS}
        before = {key: int(batch[f"{key}_before"][0]) for key in MEMORY_KEYS}
    wall = time.perf_counter() - start
    ray.shutdown()
    return {"rows": rows, "wall_s": wall, "peak": peak, "before": before}


# /proc/self/status fields, bytes: VmHWM the peak resident set (what getrusage's ru_maxrss
# reports), RssAnon the process's private memory, RssFile mapped files (shared libraries:
# torch's alone are ~0.3 GB, shared by every process on the node), RssShmem shared memory
# (the pages of Ray's object store this worker wrote its output blocks into).
MEMORY_KEYS = ("VmHWM", "RssAnon", "RssFile", "RssShmem")


def _memory() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in MEMORY_KEYS:
                values[key] = int(value.split()[0]) * 1024  # reported in kB
    return values


def _child(args: list[str], decode_env: bool = True) -> dict:
    """Run this script with `args` in a fresh process, with the environment of the job's
    decode workers (labeler.jobs.video.DECODE_ENV: malloc thresholds) unless not
    `decode_env`; its JSON result."""
    from labeler.jobs.video import DECODE_ENV

    env = {k: v for k, v in os.environ.items() if k not in DECODE_ENV}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True, env={**env, **DECODE_ENV} if decode_env else env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rates(short: Path, rounds: int) -> None:
    """Print the rates of every mode on `short`, best of `rounds` by CPU time."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for mode in MODES:
            kind = mode.removesuffix(GLIBC_DEFAULTS)
            r = _child(["--child", kind, str(short)], decode_env=kind == mode)
            if mode not in best or r["cpu_s"] < best[mode]["cpu_s"]:
                best[mode] = r
    print(f"best of {rounds} rounds:")
    for mode in MODES:
        r = best[mode]
        print(f"  {mode:26s} {r['frames']:5d} frames  {r['wall_s']:5.1f} s wall  "
              f"{r['cpu_s']:5.1f} s CPU  {r['frames_per_s']:6.1f} frames/s  "
              f"{r['frames_per_cpu_s']:6.1f} frames/CPU-s  "
              f"{r['video_s_per_cpu_s']:5.2f} video-s/CPU-s")
    gain = best["fps-noseek"]["cpu_s"] / best["fps"]["cpu_s"]
    ratio = best["all"]["frames_per_cpu_s"] / best["pyav-auto"]["frames_per_cpu_s"]
    malloc = best["all" + GLIBC_DEFAULTS]["cpu_s"] / best["all"]["cpu_s"]
    change_ms = (best["all-min-change"]["cpu_s"] - best["all"]["cpu_s"]) / best["all"]["frames"]
    assert best["all-min-change"]["frames"] == best["all"]["frames"], "a frame was skipped"
    print(f"seeking at 1 fps: {gain:.2f}x less CPU than decoding every frame; full decode "
          f"through the sampler: {ratio:.2f}x the frames per CPU-s of PyAV's loop with the "
          f"same threading; the decode workers' malloc settings: {malloc:.2f}x less CPU; "
          f"min_change: {change_ms * 1000:+.2f} CPU-ms a frame")


def memory(long: Path) -> None:
    """Print the decode stage's memory over `long`."""
    r = _child(["--child", "memory", str(long)])
    peak, before = ({k: v / 1e9 for k, v in r[key].items()} for key in ("peak", "before"))
    private = peak["RssAnon"]
    print(f"decode stage (Ray task, 1 fps, no model): {r['rows']} rows in {r['wall_s']:.1f} s")
    print(f"  worker private memory (RssAnon) peak {private:.2f} GB "
          f"({'under' if private < MEMORY_LIMIT_GB else 'OVER'} {MEMORY_LIMIT_GB} GB; "
          f"{before['RssAnon']:.2f} GB before the first frame: Python, Ray, torch)")
    print(f"  + shared libraries (RssFile) {peak['RssFile']:.2f} GB = "
          f"{private + peak['RssFile']:.2f} GB; peak RSS (VmHWM, ru_maxrss) {peak['VmHWM']:.2f} "
          f"GB also counts {peak['RssShmem']:.2f} GB of object-store pages (RssShmem)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the rate video")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the rates; best kept")
    parser.add_argument("--dir", help="keep the videos here (default: a temporary folder, "
                                      "deleted at the end)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        result = decode_stage_peak(path) if kind == "memory" else measure(kind, path)
        print(json.dumps(result))
        return

    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"{os.cpu_count()} CPUs; PyAV {av.__version__}, libavcodec "
          f"{'.'.join(map(str, av.library_versions['libavcodec']))}")
    with (contextlib.nullcontext(args.dir) if args.dir
          else tempfile.TemporaryDirectory(prefix="video-bench-")) as name:
        folder = Path(name)
        folder.mkdir(parents=True, exist_ok=True)
        short, long = folder / "short.mp4", folder / "long.mp4"
        took = encode(short, args.minutes * 60, "veryfast")
        print(f"encoded {args.minutes:g} min of 1080p{FPS} H.264 (veryfast, key frame every "
              f"{KEYINT // FPS} s) in {took:.1f} s, "
              f"{short.stat().st_size * 8 / args.minutes / 60e6:.1f} Mbit/s")
        rates(short, args.rounds)
        if args.skip_memory:
            return
        took = encode(long, LONG_MINUTES * 60, "ultrafast")
        print(f"encoded {LONG_MINUTES} min (ultrafast) in {took:.1f} s, "
              f"{long.stat().st_size * 8 / LONG_MINUTES / 60e6:.1f} Mbit/s")
        memory(long)


if __name__ == "__main__":
    main()
