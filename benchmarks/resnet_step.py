"""ResNet-20 training step: techbench's runner against a raw PyTorch loop, side by side.

Both sides train the same network (the ``resnet`` plugin built by the runner's own
``build_model``: batch norm before ReLU, He-normal init) with the same optimizer plugin (SGD with
momentum 0.9), batch size, seed and torch thread count on the same CIFAR-10-shaped random data
(3x32x32 inputs, 10 classes) held on the device; the raw loop shuffles with one seeded permutation
per epoch and slices contiguous batches, as the runner does. ``--precision bf16-mixed`` runs the
runner under Lightning's bf16 autocast and the raw loop under ``torch.autocast(bfloat16)``;
``--channels-last`` sets the matrix key ``trainer.memory_format = "channels_last"`` for the runner
and converts the raw loop's model and data the same way.

Timing: the step clock is read every ``--window`` optimizer steps (after a CUDA synchronize on a
GPU); the first window is warm-up and dropped; a side's step time is the median over its windows
of (window time / window steps). The runner is timed inside ``run_trial`` through a callback that
implements the runner's per-step hooks (``begin_step``), so its setup and epoch-end evaluation
are not in the step time, but everything the runner does per step (gradient health at the default
cadence unless ``--no-health``, loss buffering, divergence checks) is. Rounds alternate the two
sides; the ratio is the median over rounds of runner / raw in the same round.

    python benchmarks/resnet_step.py --threads 2 --steps 40 --window 5 --rounds 3
    python benchmarks/resnet_step.py --device cuda --steps 400 --window 50 --rounds 5 \\
        --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from techbench.engine.callbacks import StepCallback
from techbench.engine.trial import build_model, run_trial
from techbench.schema import AXIS_FAMILY, complete_config
from techbench.techniques.families import DatasetSplits
from techbench.techniques.registry import default_registry, get_spec
from techbench.techniques.spec import Param, TechniqueSpec


def random_cifar(data_seed: int, n_train: int) -> DatasetSplits:
    """CIFAR-10-shaped random data: uniform pixels in [0, 1], uniform labels."""
    g = torch.Generator().manual_seed(data_seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    (xt, yt), (xv, yv), (xs, ys) = part(n_train), part(256), part(256)
    return DatasetSplits("random_cifar", xt, yt, xv, yv, xs, ys, "classification", 10)


RANDOM_CIFAR = TechniqueSpec(
    name="random_cifar",
    family="dataset",
    summary="CIFAR-10-shaped random images and labels (benchmark data).",
    fast=random_cifar,
    params=(Param(name="n_train", type=int, default=4096, low=2),),
)


class _Registry:
    """The installed plugins plus the benchmark's random dataset."""

    def __init__(self) -> None:
        self.base = default_registry()

    def get_spec(self, name: str, family: str) -> TechniqueSpec:
        if family == "dataset" and name == RANDOM_CIFAR.name:
            return RANDOM_CIFAR
        return self.base.get_spec(name, family)


class _Clock:
    """Reads the clock every ``window`` steps (synchronizing a GPU first)."""

    def __init__(self, window: int, device: torch.device) -> None:
        self.window, self.device, self.times = window, device, []

    def tick(self, step: int) -> None:
        if step % self.window == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times.append(time.perf_counter())

    def step_seconds(self) -> float:
        per_step = [
            (b - a) / self.window for a, b in zip(self.times[1:], self.times[2:], strict=False)
        ]
        return statistics.median(per_step)


class RunnerClock(_Clock, StepCallback):
    """A callback the runner drives once per optimizer step (its ``begin_step`` hook)."""

    def __init__(self, window: int, device: torch.device) -> None:
        _Clock.__init__(self, window, device)

    def begin_step(self, step: int, epoch: int) -> None:
        self.tick(step)


def config(args: argparse.Namespace) -> dict[str, Any]:
    trainer: dict[str, Any] = {
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "precision": args.precision,
        "deterministic": False,
    }
    if args.channels_last:
        trainer["memory_format"] = "channels_last"
    steps = args.steps + args.window  # the clock needs one tick past the last timed window
    return complete_config(
        {
            "dataset": {
                "name": "random_cifar",
                "params": {"n_train": args.batch_size * (steps + 1)},
            },
            "model": {"name": "resnet", "params": {"depth": 20}},
            "normalizer": "batchnorm",
            "initializer": "he_normal",
            "preprocessor": "none",
            "optimizer": {"name": "momentum", "params": {"lr": 0.1, "momentum": 0.9}},
            "budget": {"epochs": 1, "max_steps": steps, "batch_size": args.batch_size},
            "health": {"enabled": not args.no_health},
            "trainer": trainer,
        }
    )


def runner_step(cfg: dict[str, Any], args: argparse.Namespace) -> float:
    clock = RunnerClock(args.window, torch.device(args.device))
    out = run_trial(cfg, callbacks=[clock], registry=_Registry())
    if out.status != "completed":
        raise SystemExit(f"runner trial {out.status}: {out.meta.error}")
    return clock.step_seconds()


def raw_step(cfg: dict[str, Any], args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    reg = _Registry()
    specs = {key: reg.get_spec(cfg[key]["name"], fam) for key, fam in AXIS_FAMILY.items()}
    splits = specs["dataset"].create(cfg["data_seed"], **cfg["dataset"]["params"])
    torch.manual_seed(cfg["seed"])
    model, _ = build_model(cfg, specs, splits)
    model = model.to(device)
    x, y = splits.x_train.to(device), splits.y_train.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = get_spec("momentum", "optimizer").create(model.parameters(), **cfg["optimizer"]["params"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    bs, n = args.batch_size, len(x)
    clock = _Clock(args.window, device)
    autocast = args.precision.startswith("bf16") and args.precision != "bf16-true"
    perm = torch.randperm(n, generator=gen).to(device)
    xs, ys = x[perm], y[perm]
    for step, lo in enumerate(range(0, n - bs + 1, bs)):
        if step >= cfg["budget"]["max_steps"]:
            break
        clock.tick(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(xs[lo : lo + bs]), ys[lo : lo + bs])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clock.step_seconds()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--window", type=int, default=5, help="steps between clock reads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-health", action="store_true", help="gradient health off in the runner")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config(args)
    runner, raw = [], []
    for r in range(args.rounds):
        pair = [("raw", raw_step), ("runner", runner_step)]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            (raw if name == "raw" else runner).append(fn(cfg, args))
    ratios = [a / b for a, b in zip(runner, raw, strict=True)]
    ms = lambda v: f"{1e3 * statistics.median(v):8.2f} ms"  # noqa: E731
    ips = lambda v: f"{args.batch_size / statistics.median(v):8.0f} img/s"  # noqa: E731
    print(
        f"ResNet-20, batch {args.batch_size}, {args.device}, {args.threads} threads, "
        f"precision {args.precision}, channels_last {args.channels_last}, "
        f"health {'off' if args.no_health else 'default cadence'}; "
        f"{args.rounds} rounds x {args.steps} steps (median of {args.window}-step windows)"
    )
    print(f"  raw loop   {ms(raw)}/step  {ips(raw)}   rounds: {[round(1e3 * v, 1) for v in raw]}")
    print(
        f"  techbench  {ms(runner)}/step  {ips(runner)}   rounds: "
        f"{[round(1e3 * v, 1) for v in runner]}"
    )
    print(
        f"  ratio techbench / raw: median {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; acceptance on a GPU: <= 1.15)"
    )


if __name__ == "__main__":
    main()
