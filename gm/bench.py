"""Benchmarks that print figures (never timed tests).

    python -m gm.bench [--experiment wgan_gp-grid25] [--steps 1000] [--repeats 2]

1. Per-stage wall time of the last pipeline run (recorded by every stage in
   artifacts/timings/).
2. Ray Train overhead: the same step loop (same model, data, batch size, threads)
   in a bare process and under Ray Train with one worker, as steps/s and their
   ratio, plus the seconds Ray spends outside the loop (worker start-up, data
   shards, teardown).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gm import stage
from gm.data.io import data_spec, read_split
from gm.models.base import build_model
from gm.training.driver import fit, init_ray
from gm.training.loop import BatchStream, Stepper, run_steps


def stage_times(root: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((root / "artifacts" / "timings").glob("*.json"))]
    return sorted(rows, key=lambda r: r["started"])


class _ArrayShard:
    """The in-memory path of BatchStream, fed from numpy instead of a Ray Data shard."""

    def __init__(self, x, y):
        import pyarrow as pa

        from gm.data.io import to_table

        self.table: pa.Table = to_table(x, y)

    def iter_batches(self, **_):
        yield self.table


def bare_steps_per_s(exp, data_dir: Path, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    spec = data_spec(data_dir)
    x, y = read_split(data_dir, "train")
    torch.manual_seed(exp.train.seed)
    model = build_model(exp.family, exp.model, spec)
    stepper = Stepper(model, spec, torch.device("cpu"), torch.Generator().manual_seed(exp.train.seed))
    batches = iter(BatchStream(_ArrayShard(x, y), spec.shape, exp.train.batch_size, True, exp.train.seed))
    run_steps(stepper, batches, 0, 10)  # warm-up, as the Ray loop's first steps also pay it
    _, seconds = run_steps(stepper, batches, 10, 10 + steps)
    return steps / seconds


def ray_run(exp, data_dir: Path, steps: int) -> dict:
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=steps, eval_every=steps))
    with tempfile.TemporaryDirectory() as d:
        out = fit(exp, data_dir, d, "bench", export_to=None)
    return {"steps_per_s": steps / out.train_seconds, "wall": out.wall_seconds,
            "outside_loop": out.wall_seconds - out.worker_seconds,
            "validation": out.worker_seconds - out.train_seconds}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="gm benchmarks")
    p.add_argument("--experiment", default="wgan_gp-grid25")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    root = stage.root()

    rows = stage_times(root)
    if rows:
        print("per-stage wall time of the last pipeline run (artifacts/timings):")
        for r in rows:
            print(f"  {r['stage']:<32} {r['seconds']:8.1f} s")
        print(f"  {'total':<32} {sum(r['seconds'] for r in rows):8.1f} s")
    else:
        print("no stage timings yet: run `make run` first")

    params = stage.params(root)
    exp = params.experiment(args.experiment)
    data_dir = stage.prepared_dir(exp.dataset, root)
    threads = max(1, int(exp.train.scaling.cpus_per_worker))  # Ray gives a worker this many threads
    init_ray(params.ray)
    bare, ray_ = [], []
    for _ in range(args.repeats):
        bare.append(bare_steps_per_s(exp, data_dir, args.steps, threads))
        ray_.append(ray_run(exp, data_dir, args.steps))
    b = statistics.mean(bare)
    r = statistics.mean(x["steps_per_s"] for x in ray_)
    print(f"\nstep loop of {args.experiment}, {args.steps} iterations, batch {exp.train.batch_size}, "
          f"{threads} thread(s), {args.repeats} repeats:")
    print(f"  bare process : {b:8.1f} steps/s  ({', '.join(f'{v:.1f}' for v in bare)})")
    print(f"  Ray Train    : {r:8.1f} steps/s  ({', '.join(f'{x['steps_per_s']:.1f}' for x in ray_)})")
    print(f"  ratio Ray/bare: {r / b:.3f}  (slowdown {100 * (1 - r / b):+.1f}%)")
    print(f"  Ray outside the loop (workers, data shards, teardown): "
          f"{statistics.mean(x['outside_loop'] for x in ray_):.1f} s per run; "
          f"validation + checkpoint {statistics.mean(x['validation'] for x in ray_):.1f} s")


if __name__ == "__main__":
    main()
