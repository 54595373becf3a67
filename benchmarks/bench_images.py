"""Image preparation for the inference worker: image bytes to encoder input (299, 299, 3) float32.

Prints one JSON object. Run from the repository root:
`python benchmarks/bench_images.py [--images 128] [--large 32] [--reps 3]` (50 s on 2 idle cores).

Inputs, generated with fixed seeds: `--images` photo-like 640×480 JPEGs (COCO's size; smooth
colour fields, a few soft-edged shapes, fine texture and sensor noise; quality 90, about 70 KB),
`--large` 1280×960 JPEGs made the same way (about 260 KB), and `--images` of the 299×299 shapes
PNGs the project trains on (`model.shapes.write_shapes_dataset`, as bench_pipeline.py makes them).

- `free_cores_measured`: CPU seconds per wall second that os.cpu_count() spinning processes
  get together, just before the scaling runs: the cores this run could really use (other work
  on a shared machine takes the rest; `load_avg_*` is the same story, coarser).
- `{set}_images_per_s_{n}_threads`: `model.images.decode_image` over the whole set through a
  ThreadPoolExecutor of n threads (1, 2, 4, … and os.cpu_count()); median of `--reps` passes, the
  thread counts interleaved so drift hits all alike. `{set}_cpu_ms_per_image_{n}_threads` is the
  process CPU time (time.process_time, all threads) per image, so
  `{set}_images_per_s_per_core` = 1000 / cpu_ms_per_image with one thread.
  `{set}_scaling_1_to_{n}` is the n-thread rate over the 1-thread rate (at best n, or
  `free_cores_measured` where that is lower).
- `jpeg_640_images_per_s_{n}_processes`: the same through a ProcessPoolExecutor (spawn, workers
  started before timing), the arrays pickled back to the parent as a worker would need them; its
  CPU time adds the workers' (from /proc) to the parent's.
- `jpeg_{640,1280}_{variant}_*`, one thread, against `baseline`, the preparation as it was
  before draft mode (`prepare()` with its defaults); `worker` is `decode_image` as the worker
  runs it now (draft mode and no copies, so it should match `draft_no_copies`):
  `draft` calls `image.draft("RGB", (299, 299))` before decoding (libjpeg scales by 1/2, 1/4 or
  1/8 while the result stays at least 299 on both sides; `_draft_decoded_size` says what it got);
  `reducing_gap_{g}` resizes with `reducing_gap=g` (a box `Image.reduce` by an integer factor
  first, then BILINEAR); `no_copies` skips the two full-size copies of today's conversion
  (`exif_transpose(in_place=True)`, no `convert("RGB")` of an RGB picture); `draft_no_copies`
  does both. For each: images/s over `--reps` passes (the variants take turns on every image,
  so drift and other load hit all alike), speedup over the baseline, and the largest and mean
  absolute difference of the float32 output from the baseline's, in [-1, 1] units (one 8-bit
  level is 2/255 = 0.0078).
- `jpeg_640_stage_ms_*`: medians per image of one thread's steps: decode, EXIF + RGB (`rgb`),
  resize, scale to float32.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw, ImageOps, features  # noqa: E402

from core.images import FORMATS, to_rgb  # noqa: E402
from model.images import IMAGE_SIZE, decode_image  # noqa: E402
from model.shapes import write_shapes_dataset  # noqa: E402

SIZE = (IMAGE_SIZE, IMAGE_SIZE)
QUALITY = 90
GAPS = (1.0, 2.0)  # 3.0 reduces neither size; after draft, 2.0 reduces neither
SPIN_S = 0.5


def photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-like RGB picture: smooth colour field, soft shapes, fine texture, sensor noise."""
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), "RGB")
    half = field.resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(half)
    for _ in range(int(rng.integers(3, 7))):
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = (x, y, x + int(rng.integers(w // 20, w // 6)), y + int(rng.integers(h // 20, h // 6)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    base = np.asarray(half.resize(size, Image.Resampling.BICUBIC), np.float32)  # soft edges
    texture = rng.uniform(-40, 40, (h // 16, w // 16)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize(size, Image.Resampling.BICUBIC))
    noise = 5 * rng.standard_normal((h, w, 3), dtype=np.float32)
    pixels = np.clip(base + texture[..., None] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def jpegs(n: int, size: tuple[int, int], seed: int) -> list[bytes]:
    """`n` photo-like JPEGs of `size` at quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        photo(rng, size).save(buffer, "JPEG", quality=QUALITY)
        out.append(buffer.getvalue())
    return out


def shapes_pngs(n: int) -> list[bytes]:
    """`n` of the project's 299×299 shapes PNGs, made as bench_pipeline.py makes them."""
    with tempfile.TemporaryDirectory() as tmp:
        write_shapes_dataset(Path(tmp), n, seed=3, val_fraction=0.0)
        return [p.read_bytes() for p in sorted(Path(tmp, "images", "train").glob("*.png"))]


def decoded(data: bytes, draft: bool) -> Image.Image:
    """The picture decoded in its own mode, at full size or (draft) reduced by libjpeg."""
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    if draft:
        image.draft("RGB", SIZE)
    image.load()
    return image


def upright_in_place(image: Image.Image) -> Image.Image:
    """EXIF orientation and RGB without copying a picture that needs neither."""
    ImageOps.exif_transpose(image, in_place=True)
    return image if image.mode == "RGB" else to_rgb(image)


def scaled(image: Image.Image, gap: float | None) -> np.ndarray:
    """Resize (BILINEAR, optionally with reducing_gap) and scale to float32 in [-1, 1]."""
    resized = image.resize(SIZE, Image.Resampling.BILINEAR, reducing_gap=gap)
    return np.asarray(resized, dtype=np.float32) / 127.5 - 1.0


def prepare(data: bytes, draft=False, gap: float | None = None, copies=True) -> np.ndarray:
    """`decode_image` step by step (pictures freed at the same points); optionally draft mode,
    reducing_gap, or without today's two full-size copies (exif_transpose, convert)."""
    if copies:
        return scaled(to_rgb(ImageOps.exif_transpose(decoded(data, draft))), gap)
    return scaled(upright_in_place(decoded(data, draft)), gap)


def draft_size(data: bytes) -> str:
    """The size libjpeg decodes to in draft mode for (299, 299)."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", SIZE)
    return "x".join(map(str, image.size))


def run_pool(pool: Executor, fn: Callable, datas: list[bytes]) -> tuple[float, float]:
    """Wall and process CPU seconds for mapping `fn` over `datas` in `pool`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in pool.map(fn, datas):
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def threaded(fn: Callable, datas: list[bytes], workers: int) -> tuple[float, float]:
    """Wall and CPU seconds for `fn` over `datas` in a fresh, warmed thread pool."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, datas[:workers]))  # start the threads
        return run_pool(pool, fn, datas)


def thread_counts() -> list[int]:
    """1, 2, 4, … up to os.cpu_count() threads, and os.cpu_count() itself."""
    cores = os.cpu_count() or 1
    return sorted({2**k for k in range(cores.bit_length()) if 2**k <= cores} | {cores})


def scaling_figures(name: str, datas: list[bytes], reps: int) -> dict:
    """Images/s and CPU ms per image at each thread count, and the scaling over one thread."""
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in thread_counts()}
    threaded(decode_image, datas[:8], 1)  # warm-up: plugins, allocator
    for _ in range(reps):
        for n in runs:
            runs[n].append(threaded(decode_image, datas, n))
    out: dict = {}
    for n, times in runs.items():
        label = "1_thread" if n == 1 else f"{n}_threads"
        out[f"{name}_images_per_s_{label}"] = len(datas) / statistics.median(w for w, _ in times)
        cpu_s = statistics.median(c for _, c in times)
        out[f"{name}_cpu_ms_per_image_{label}"] = 1000 * cpu_s / len(datas)
    one = out[f"{name}_images_per_s_1_thread"]
    out[f"{name}_images_per_s_per_core"] = 1000 / out[f"{name}_cpu_ms_per_image_1_thread"]
    for n in runs:
        if n > 1:
            out[f"{name}_scaling_1_to_{n}"] = out[f"{name}_images_per_s_{n}_threads"] / one
    return out


def children_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def spin(seconds: float) -> float:
    """CPU seconds this process gets while it spins for `seconds` of wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        pass
    return time.process_time() - cpu


def free_cores(pool: ProcessPoolExecutor, n: int) -> float:
    """How many cores n spinning processes get together right now (n if the machine is idle)."""
    start = time.perf_counter()
    cpu = sum(pool.map(spin, [SPIN_S] * n))
    return cpu / (time.perf_counter() - start)


def process_figures(name: str, datas: list[bytes], reps: int) -> dict:
    """Free cores, then images/s and CPU ms per image in a spawned pool of cpu_count() workers."""
    n = os.cpu_count() or 1
    walls, cpus = [], []
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(decode_image, datas[: 4 * n]))  # start and warm every worker
        cores = free_cores(pool, n)
        pids = list(pool._processes)  # private, but the only way to the workers' ids
        for _ in range(reps):
            before = children_cpu_s(pids)
            wall, cpu = run_pool(pool, decode_image, datas)
            walls.append(wall)
            cpus.append(cpu + children_cpu_s(pids) - before)
    return {
        "free_cores_measured": cores,
        f"{name}_images_per_s_{n}_processes": len(datas) / statistics.median(walls),
        f"{name}_cpu_ms_per_image_{n}_processes": 1000 * statistics.median(cpus) / len(datas),
    }


def interleaved(fns: dict[str, Callable], datas: list[bytes], reps: int) -> dict[str, float]:
    """Seconds per pass over `datas` of each function, taking turns on every image (in a
    rotating order) so that drift and other load on the machine hit all of them alike."""
    totals = dict.fromkeys(fns, 0.0)
    names = list(fns)
    for rep in range(reps):
        for i, data in enumerate(datas):
            k = (i + rep) % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                fns[name](data)
                totals[name] += time.perf_counter() - start
    return {name: total / reps for name, total in totals.items()}


def variants() -> dict[str, Callable]:
    """The preparation before draft mode, the worker's decode_image, and the alternatives."""
    out: dict[str, Callable] = {
        "baseline": prepare,
        "worker": decode_image,
        "draft": partial(prepare, draft=True),
    }
    for gap in GAPS:
        out[f"reducing_gap_{gap:g}"] = partial(prepare, gap=gap)
    out["no_copies"] = partial(prepare, copies=False)
    out["draft_no_copies"] = partial(prepare, draft=True, copies=False)
    return out


def variant_figures(name: str, datas: list[bytes], reps: int) -> dict:
    """Images/s of each variant (interleaved per image) and its difference from the baseline."""
    fns = variants()
    if not np.array_equal(prepare(datas[0], draft=True, copies=False), decode_image(datas[0])):
        raise RuntimeError("prepare() no longer matches decode_image(): update the benchmark")
    baseline = np.stack([prepare(d) for d in datas])
    out: dict = {f"{name}_draft_decoded_size": draft_size(datas[0])}
    for v, fn in fns.items():  # this untimed pass warms each variant up too
        if v == "baseline":
            continue
        diff = np.abs(np.stack([fn(d) for d in datas]) - baseline)
        out[f"{name}_{v}_max_abs_diff"] = float(diff.max())
        out[f"{name}_{v}_mean_abs_diff"] = float(diff.mean())
    seconds = interleaved(fns, datas, reps)
    for v in fns:
        out[f"{name}_{v}_images_per_s"] = len(datas) / seconds[v]
        out[f"{name}_{v}_speedup"] = seconds["baseline"] / seconds[v]
    return out


def stage_figures(name: str, datas: list[bytes]) -> dict:
    """Median milliseconds per image of each step of decode_image, in this thread."""
    steps: dict[str, list[float]] = {"decode": [], "rgb": [], "resize": [], "scale": []}
    for data in datas:
        t0 = time.perf_counter()
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        image.load()
        t1 = time.perf_counter()
        image = to_rgb(ImageOps.exif_transpose(image))
        t2 = time.perf_counter()
        resized = image.resize(SIZE, Image.Resampling.BILINEAR)
        t3 = time.perf_counter()
        np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        t4 = time.perf_counter()
        for key, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[key].append(seconds)
    return {f"{name}_stage_ms_{k}": 1000 * statistics.median(v) for k, v in steps.items()}


def machine() -> dict:
    """Where and when this ran, and how busy the machine was at the start."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "benchmark": "bench_images",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_avg_1_5_15_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
    }


def inputs(args: argparse.Namespace) -> dict[str, list[bytes]]:
    """The three image sets: 640×480 JPEGs, 1280×960 JPEGs and 299×299 shapes PNGs."""
    return {
        "jpeg_640": jpegs(args.images, (640, 480), seed=0),
        "jpeg_1280": jpegs(args.large, (1280, 960), seed=1),
        "png_299": shapes_pngs(args.images),
    }


def rounded(result: dict) -> dict:
    """Floats to 3 decimals (the differences to 6)."""
    return {
        k: (round(v, 6) if "diff" in k else round(v, 3)) if isinstance(v, float) else v
        for k, v in result.items()
    }


def main() -> None:
    """Run every measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="640×480 JPEGs and shapes PNGs")
    parser.add_argument("--large", type=int, default=32, help="1280×960 JPEGs")
    parser.add_argument("--reps", type=int, default=3, help="timed passes per figure")
    args = parser.parse_args()
    started = time.perf_counter()
    result = machine()
    sets = inputs(args)
    result |= {"images": args.images, "large": args.large, "reps": args.reps}
    for name, datas in sets.items():
        result[f"{name}_mean_kb"] = statistics.mean(map(len, datas)) / 1000
    result |= process_figures("jpeg_640", sets["jpeg_640"], args.reps)
    result |= scaling_figures("jpeg_640", sets["jpeg_640"], args.reps)
    result |= scaling_figures("png_299", sets["png_299"], args.reps)
    result |= variant_figures("jpeg_640", sets["jpeg_640"], args.reps)
    result |= variant_figures("jpeg_1280", sets["jpeg_1280"], args.reps)
    result |= stage_figures("jpeg_640", sets["jpeg_640"])
    n = os.cpu_count() or 1
    result["scaling_1_to_2"] = result["jpeg_640_scaling_1_to_2"]
    result[f"scaling_1_to_{n}_processes"] = (
        result[f"jpeg_640_images_per_s_{n}_processes"] / result["jpeg_640_images_per_s_1_thread"]
    )
    result["cpu_ms_per_image"] = result["jpeg_640_cpu_ms_per_image_1_thread"]
    result["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(rounded(result), indent=1))


if __name__ == "__main__":
    main()
