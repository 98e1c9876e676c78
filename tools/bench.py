"""Benchmarks: figures that the issues and the book quote, measured by one command.

    python tools/bench.py shapeworld     # rendering speed (images/s, one core)
    python tools/bench.py notebooks      # each notebook's run time, median of 3
    python tools/bench.py models         # training and sampling speed of each model
    python tools/bench.py all            # everything, into one JSON file

Results are printed and written as JSON (``--out``, default ``bench_results/NAME.json``).
Speed is measured here, never in unit tests: a shared machine is too noisy for that.

The book shows the latest figures: ``notebooks`` (and ``all``) update the table of notebook run
times in ``book/generated/notebook_runtimes.md`` (merging in the notebooks that were run), and
``all`` copies its JSON to ``book/generated/bench_all.json``. Commit them after a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbrun import CPU_BUDGET_S, Client
from nbrun import cell_seconds as _cell_seconds

import minimodels
from minimodels import shapeworld as sw
from minimodels.clip import CLIPConfig
from minimodels.data.images import to_tensor
from minimodels.evaluate import evaluate
from minimodels.pipelines import DDPMPipeline
from minimodels.recipes import SHIPPED, clip, dalle, ddpm, dvae, gpt, judge, vilbert, vilt

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "book" / "generated"  # what the book includes


def bench_shapeworld(n: int = 5000, repeats: int = 3, image_size: int = 32) -> dict:
    """Images per second: rendering alone, and sampling scenes + rendering (numpy, one core)."""
    render, total = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        scenes = sw.sample_scenes("train", n, seed=r, image_size=image_size)
        t1 = time.perf_counter()
        sw.render(scenes, image_size)
        t2 = time.perf_counter()
        render.append(n / (t2 - t1))
        total.append(n / (t2 - t0))
    return {
        "image_size": image_size,
        "n": n,
        "render_images_per_s": round(statistics.median(render)),
        "sample_and_render_images_per_s": round(statistics.median(total)),
    }


CPU_CELL = "import time as _t\nprint('cpu_s', _t.process_time())"  # appended, then removed


def run_notebook(path: Path, timeout: int = 600, notebook=None) -> tuple[float, float]:
    """Execute a notebook in a fresh kernel (cwd = its folder); returns (wall s, kernel CPU s).

    The CPU time is the kernel's ``time.process_time()`` after the last cell (all its threads,
    from kernel start), read by a cell appended for it and removed again. ``notebook``: an
    nbformat node already read from ``path``, executed in place (its outputs are kept); by
    default the file is read and the outputs are discarded. The client is ``nbrun.Client``,
    whose sliced waits keep the runner from stalling after widget cells.
    """
    nb = notebook if notebook is not None else nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CPU_CELL))
    client = Client(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        probe = nb.cells.pop()
    wall = time.perf_counter() - start
    printed = "".join(o.get("text", "") for o in probe.get("outputs", []))
    cpu = float(printed.split()[-1])
    cells = _cell_seconds(nb)
    if cells and wall - sum(cells) > 60:
        # over a minute outside the cells: not the notebook's own time (a stall of the runner;
        # see tools/nbrun.py)
        print(f"warning: {path.name}: {wall:.0f} s in all but {sum(cells):.0f} s in its cells",
              file=sys.stderr, flush=True)  # fmt: skip
    return wall, cpu


def bench_notebooks(repeats: int = 3, pattern: str = "*.ipynb") -> dict:
    """Median (and all) wall and kernel CPU times of every notebook in notebooks/."""
    folder = REPO / "notebooks"
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise SystemExit(f"no notebooks matching {pattern!r} in {folder}")
    out = {}
    for path in paths:
        walls, cpus = zip(*(run_notebook(path) for _ in range(repeats)))
        out[path.stem] = {
            "median_s": round(statistics.median(walls), 1),
            "runs_s": [round(t, 1) for t in walls],
            "cpu_median_s": round(statistics.median(cpus), 1),
            "cpu_runs_s": [round(t, 1) for t in cpus],
        }
        f = out[path.stem]
        print(f"{path.stem:28s} median {f['median_s']:6.1f} s wall, {f['cpu_median_s']:6.1f} s "
              f"CPU  runs {f['runs_s']}", flush=True)  # fmt: skip
    return out


def _marginal_rate(train, batch_size: int, short: int = 4, long: int = 16) -> float:
    """Training samples per second, set-up excluded: time `long` and `short` steps, divide."""
    times = {}
    for steps in (short, long):
        start = time.perf_counter()
        train(steps)
        times[steps] = time.perf_counter() - start
    return round((long - short) * batch_size / max(times[long] - times[short], 1e-9), 1)


def _rate(fn, items: int) -> float:
    """Items per second of one call of ``fn`` (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    fn()
    return round(items / (time.perf_counter() - start), 2)


def bench_models() -> dict:
    """Samples per second of each model's training step and of its sampler, on this machine."""
    quiet = {"progress": False, "device": "cpu"}
    out = {"training_samples_per_s": {}, "sampler": {}}
    train = out["training_samples_per_s"]
    train["judge"] = _marginal_rate(lambda n: judge.train_judge(n, 128, **quiet), 128)
    train["clip"] = _marginal_rate(
        lambda n: clip.train_clip(n, 128, config=CLIPConfig(patch_size=2), **quiet), 128
    )
    train["vilbert"] = _marginal_rate(lambda n: vilbert.train_vilbert(n, 0, 64, **quiet), 64)
    train["vilt"] = _marginal_rate(lambda n: vilt.train_vilt(n, 64, **quiet), 64)
    train["dvae"] = _marginal_rate(lambda n: dvae.train_dvae(n, 64, **quiet), 64)
    shipped_dvae = minimodels.pretrained("dvae", device="cpu")
    train["dalle_prior"] = _marginal_rate(
        lambda n: dalle.train_prior(shipped_dvae, n, 64, n_data=2000, **quiet), 64
    )
    train["ddpm"] = _marginal_rate(lambda n: ddpm.train_unet(n, 32, **quiet), 32)
    train["ddpm_text"] = _marginal_rate(lambda n: ddpm.train_unet(n, 32, text=True, **quiet), 32)
    train["gpt"] = _marginal_rate(lambda n: gpt.train_gpt(n, 64, **quiet), 64)

    sampler = out["sampler"]
    torch.manual_seed(0)
    dalle_pipe = minimodels.pretrained("dalle", device="cpu")
    sampler["dalle_images_per_s"] = _rate(
        lambda: dalle_pipe(["a red circle"], num_images_per_prompt=16), 16
    )
    ddpm_pipe = DDPMPipeline(minimodels.pretrained("ddpm", device="cpu"))
    sampler["ddpm_ddim50_images_per_s"] = _rate(lambda: ddpm_pipe(64, num_inference_steps=50), 64)
    text = minimodels.pretrained("ddpm-text", device="cpu")
    sampler["ddpm_text_ddim50_images_per_s"] = _rate(
        lambda: text(["a red circle"], num_images_per_prompt=16, num_inference_steps=50), 16
    )
    lm = minimodels.pretrained("gpt", device="cpu")
    ids = torch.full((16, 4), 5, dtype=torch.long)
    sampler["gpt_tokens_per_s"] = _rate(lambda: lm.generate(ids, max_new_tokens=20), 16 * 20)
    vlm = minimodels.pretrained("llava", device="cpu")
    pixels = to_tensor(sw.generate("test", n=16, seed=0)[0])
    prompts = ["<image> how many shapes are there?"] * 16
    sampler["llava_answers_per_s"] = _rate(
        lambda: vlm.generate(pixels, prompts, max_new_tokens=4), 16
    )
    return out


def write_runtime_table(results: dict, machine_info: dict, folder: Path = GENERATED) -> Path:
    """Merge ``results`` (bench_notebooks' output) into the book's table of notebook run times."""
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "notebook_runtimes.json"
    table = json.loads(store.read_text()) if store.exists() else {"notebooks": {}}
    for name, figures in results.items():
        table["notebooks"][name] = {**figures, "date": machine_info["date"]}
    table["machine"] = machine_info
    store.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    m = machine_info
    lines = [
        "| notebook | median wall time (s) | median CPU time (s) | wall times of the runs (s) "
        "| measured |",
        "|---|---:|---:|---|---|",
    ]
    for name, figures in sorted(table["notebooks"].items()):
        runs = ", ".join(f"{t:.1f}" for t in figures["runs_s"])
        cpu = f"{figures['cpu_median_s']:.1f}" if "cpu_median_s" in figures else "–"
        lines.append(f"| {name} | {figures['median_s']:.1f} | {cpu} | {runs} | {figures['date']} |")
    lines += [
        "",
        f"Each notebook run top to bottom in a fresh kernel, {len(figures['runs_s'])} times, by "
        f"`python tools/bench.py notebooks` on {m['cpu_count']} CPU cores "
        f"({m['machine']}, Python {m['python']}, torch {m['torch']}, "
        f"{m['torch_threads']} torch thread{'s' * (m['torch_threads'] > 1)}). The CPU time is "
        "the kernel's `time.process_time()` after the last cell; `make test` fails a notebook "
        f"whose kernel uses over {CPU_BUDGET_S:g} s of it (conftest.py)."
        + ("" if m.get("gpu") else " These runs had no GPU; none was lent for a GPU column."),
    ]
    stalled = [
        f"{name} ({t:.0f} s)"
        for name, figures in sorted(table["notebooks"].items())
        for t in figures["runs_s"]
        if t > 3 * figures["median_s"] + 60
    ]
    if stalled:
        lines += [
            "",
            f"Runs far above their median ({', '.join(stalled)}) are stalls of the notebook "
            "runner, not the notebook's own time: now and then the runner waits about 600 s "
            "for a reply while the kernel sits idle. The median leaves them out.",
        ]
    out = folder / "notebook_runtimes.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=["shapeworld", "notebooks", "models", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pattern", default="*.ipynb", help="which notebooks (glob)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--reuse-notebooks",
        action="store_true",
        help="all: take the notebook run times from book/generated/notebook_runtimes.json "
        "(written by `bench notebooks`) instead of running every notebook again",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.reuse_notebooks:
        store = GENERATED / "notebook_runtimes.json"
        if args.what != "all":
            parser.error("--reuse-notebooks goes with `all` only")
        if not store.exists():
            parser.error(f"--reuse-notebooks: {store} is missing; run `bench notebooks` first")
        stored = json.loads(store.read_text())
    result = {"machine": machine()}
    if args.what in ("shapeworld", "all"):
        result["shapeworld"] = bench_shapeworld(repeats=args.repeats)
    if args.what == "all" and args.reuse_notebooks:
        result["notebooks"] = stored["notebooks"]
    elif args.what in ("notebooks", "all"):
        result["notebooks"] = bench_notebooks(args.repeats, args.pattern)
        print(f"wrote {write_runtime_table(result['notebooks'], result['machine'])}")
    if args.what in ("models", "all"):
        result["models"] = bench_models()
    if args.what == "all":
        result["evaluate"] = {}
        for name, shipped in SHIPPED.items():  # each at its usual size, e.g. dalle 200
            n = shipped.n
            print(f"evaluate {name} --seed 0 --n {n}", flush=True)
            result["evaluate"][name] = {"n": n, **evaluate(name, seed=0, n=n)}
    out = args.out or REPO / "bench_results" / f"{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.what == "all":
        GENERATED.mkdir(parents=True, exist_ok=True)
        (GENERATED / "bench_all.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
