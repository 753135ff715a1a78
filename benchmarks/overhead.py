"""Runner overhead: a techbench trial against a hand-written PyTorch loop doing the same work.

Both sides train the same MLP (built by the runner's own ``build_model`` from the registry's
plugins, with the same optimizer and schedule objects) on the same preprocessed data,
with the same batch size, seed and torch thread count, and both evaluate the train and validation
sets at every epoch end and the test set at the end. The raw loop shuffles with a seeded
permutation per epoch and slices contiguous batches, as the runner does. What differs is only the
loop: Lightning's fit loop, hooks and the trial's bookkeeping (per-step loss rows, divergence
checks, best-weights copy) versus a bare ``for`` loop.

The techbench side runs three ways: gradient health off, the default cadence (``DEFAULT_CONFIG``)
and every step (``--cadence`` adds others). Each round runs them and the raw loop in a shuffled
order. ``paired`` is the median over rounds of the run's time over the raw loop's time in the same
round (slow drifts of a shared machine cancel), with a 95% bootstrap interval of that median
(resampling the rounds); ``best`` is the fastest run over the fastest raw run (noise on a shared
machine only adds time). ``wall`` is the whole trial (``run_trial`` from config to outcome, setup
included), ``train`` the training loop only (``train_seconds``, evaluation excluded, against the
raw loop's training time), ``cpu`` the process CPU time of the whole trial;
``ms/snap`` is the time inside the health callback per snapshot (its own clock, so it is not
affected by drifts between runs).

``--curvature`` adds the default health plus the curvature probe (``health.curvature`` with
``every_n_steps = 50, iterations = 20`` and the default probe batch, :mod:`techbench.engine.curvature_probe`)
and prints its paired median ratio to the default health alone (the issue 26 budget: <= 1.2x),
with the probe's milliseconds per probe (``curvature_overhead / curvature_probes``).

``--stack K`` adds the same three runs as one stack of K seeds (:func:`techbench.engine.trial.run_stack`):
their seconds are per member (the stack's time / K) against the raw loop of one trial, and
``ms/snap`` is per snapshot of the whole stack.

    python benchmarks/overhead.py --epochs 30 --repeats 20 --threads 1
    python benchmarks/overhead.py --depth 4 --width 512 --batch-size 256 --repeats 20
    python benchmarks/overhead.py --epochs 10 --repeats 7 --stack 8
    python benchmarks/overhead.py --repeats 15 --curvature --optimizer sgd
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import time
from typing import Any

import torch

from techbench.engine.trial import build_model, prepare, run_stack, run_trial
from techbench.schema import DEFAULT_CONFIG, complete_config
from techbench.techniques.registry import get_spec

CURVATURE = "health default + curvature"


def raw_loop(cfg: dict[str, Any]) -> tuple[float, float, float]:
    """(wall seconds, training seconds, final test accuracy) of a plain PyTorch loop."""
    start = time.perf_counter()
    spec = lambda key, fam: get_spec(cfg[key]["name"], fam)  # noqa: E731
    hp = lambda key: cfg[key]["params"]  # noqa: E731
    specs, splits = prepare(cfg, None)  # the runner's data and preprocessing
    torch.manual_seed(cfg["seed"])
    model, _ = build_model(cfg, specs, splits)  # the runner's own network ("none" regularizer)
    opt = spec("optimizer", "optimizer").create(model.parameters(), **hp("optimizer"))
    bs, epochs = cfg["budget"]["batch_size"], cfg["budget"]["epochs"]
    n = len(splits.x_train)
    steps = epochs * ((n + bs - 1) // bs)
    sched = spec("schedule", "schedule").create(opt, steps, **hp("schedule"))
    gen = torch.Generator().manual_seed(cfg["seed"])
    loss_fn = torch.nn.functional.cross_entropy

    @torch.no_grad()
    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        out = model(x)
        model.train()
        return float(loss_fn(out, y)), float((out.argmax(1) == y).double().mean())

    train_time = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        xs, ys = splits.x_train[perm], splits.y_train[perm]
        for lo in range(0, n, bs):
            loss = loss_fn(model(xs[lo : lo + bs]), ys[lo : lo + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_time += time.perf_counter() - t0
        evaluate(splits.x_train, splits.y_train)
        evaluate(splits.x_val, splits.y_val)
    acc = evaluate(splits.x_test, splits.y_test)[1]
    return time.perf_counter() - start, train_time, acc


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seed", type=int, default=0, help="seed of the run order shuffle")
    p.add_argument(
        "--cadence", type=int, nargs="*", default=[], help="more health variants: every N steps"
    )
    p.add_argument("--stack", type=int, default=0, help="also run stacks of this many seeds")
    p.add_argument("--curvature", action="store_true", help="also the curvature probe (50, 20)")
    p.add_argument("--optimizer", default=None, help="optimizer name (default: DEFAULT_CONFIG's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = complete_config(
        {
            "dataset": {"name": args.dataset, "params": {}},
            "model": {"name": "mlp", "params": {"depth": args.depth, "width": args.width}},
            "budget": {"epochs": args.epochs, "batch_size": args.batch_size},
            **({"optimizer": args.optimizer} if args.optimizer else {}),
        }
    )
    default = DEFAULT_CONFIG["health"]["every_n_steps"]
    variants = {
        "health off": {"enabled": False, "every_n_steps": default},
        f"health default ({default})": {"enabled": True, "every_n_steps": default},
        "health every step": {"enabled": True, "every_n_steps": 1},
    } | {f"health every {n}": {"enabled": True, "every_n_steps": n} for n in args.cadence}
    probe = {"every_n_steps": 50, "iterations": 20}
    if args.curvature:
        variants[CURVATURE] = {"enabled": True, "every_n_steps": default, "curvature": probe}
    stacked = {f"stack {args.stack}, {k}": v for k, v in variants.items()} if args.stack > 1 else {}
    names = ["raw torch", *variants, *stacked]
    raw_loop(base)  # warm-up: imports, allocator, dataset cache
    run_trial(base)
    gc.collect()
    gc.freeze()  # long-lived objects (modules, registry) leave the collector's generations
    wall: dict[str, list[float]] = {k: [] for k in names}
    train: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    accs: dict[str, float] = {}
    probes: list[float] = []
    snapshot: dict[str, list[float]] = {k: [] for k in names}
    order = random.Random(args.seed)
    for _ in range(args.repeats):
        for name in order.sample(names, len(names)):
            gc.collect()  # a previous run's garbage is collected here, not inside the next run
            c0 = time.process_time()
            if name == "raw torch":
                w, t, acc = raw_loop(base)
            elif name in stacked:
                health = stacked[name]
                configs = [{**base, "seed": s, "health": health} for s in range(args.stack)]
                outcomes = run_stack(configs)
                if any(o.status != "completed" for o in outcomes):
                    raise SystemExit(f"{name}: {outcomes[0].status}: {outcomes[0].meta.error}")
                meta = outcomes[0].meta
                w, t = meta.wall_seconds / args.stack, meta.train_seconds / args.stack
                if health["enabled"]:
                    taken = -(-int(meta.steps) // health["every_n_steps"])
                    snapshot[name].append(meta.health_overhead / taken)
                acc = outcomes[0].metric("test", "acc")[0]
            else:
                outcome = run_trial({**base, "health": variants[name]})
                if outcome.status != "completed":
                    raise SystemExit(f"{name}: trial {outcome.status}: {outcome.meta.error}")
                w, t = outcome.meta.wall_seconds, outcome.meta.train_seconds
                if name == CURVATURE:
                    meta = outcome.meta
                    probes.append(meta.curvature_overhead / max(meta.curvature_probes, 1))
                every = variants[name]["every_n_steps"]
                if variants[name]["enabled"]:
                    taken = -(-int(outcome.meta.steps) // every)
                    snapshot[name].append(outcome.meta.health_overhead / taken)
                acc = outcome.metric("test", "acc")[0]
            per = args.stack if name in stacked else 1  # a stack: per member
            cpu[name].append((time.process_time() - c0) / per)
            wall[name].append(w)
            train[name].append(t)
            accs[name] = acc
    steps = args.epochs * -(
        -len(get_spec(args.dataset, "dataset").create(0).x_train) // args.batch_size
    )
    print(
        f"{args.dataset}, mlp {args.depth}x{args.width}, batch {args.batch_size}, {args.epochs} epochs "
        f"(~{steps} steps), {args.threads} thread(s), torch {torch.__version__}, "
        f"{args.repeats} rounds in shuffled order"
    )
    print(
        "paired = median over rounds of (this run / the raw loop of the same round) "
        "[95% bootstrap interval of the median]; "
        "best = fastest run / fastest raw run; seconds are medians"
    )
    print(
        f"{'run':<32}{'wall s':>8}{'wall paired':>22}{'best':>7}{'train s':>9}"
        f"{'train paired':>22}{'best':>7}{'cpu paired':>13}{'ms/step':>9}{'ms/snap':>9}"
        f"{'test acc':>9}"
    )
    for name in names:
        mt = statistics.median(train[name])
        print(
            f"{name:<32}{statistics.median(wall[name]):>8.3f}{_ratio(wall, name):>22}"
            f"{min(wall[name]) / min(wall['raw torch']):>7.3f}{mt:>9.3f}{_ratio(train, name):>22}"
            f"{min(train[name]) / min(train['raw torch']):>7.3f}"
            f"{_ratio(cpu, name).split()[0]:>13}{1000 * mt / steps:>9.3f}"
            f"{1000 * statistics.median(snapshot[name]) if snapshot[name] else math.nan:>9.3f}"
            f"{accs[name]:>9.4f}"
        )
    if args.curvature:
        _curvature_summary(wall, train, probes, f"health default ({default})")


def _curvature_summary(
    wall: dict[str, list[float]], train: dict[str, list[float]], probes: list[float], default: str
) -> None:
    """The curvature probe against the default health alone, paired per round."""
    print(
        f"curvature probe (every 50 steps, at most 20 Lanczos steps) / {default}: "
        f"wall {_ratio(wall, CURVATURE, base=default)}, "
        f"train {_ratio(train, CURVATURE, base=default)}; "
        f"{1000 * statistics.median(probes):.1f} ms per probe (median)"
    )


def _ratio(
    times: dict[str, list[float]], name: str, resamples: int = 2000, base: str = "raw torch"
) -> str:
    """Median of the per-round ratios ``name`` / ``base``, with a 95% bootstrap interval."""
    ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
    if len(ratios) < 2:
        return f"{ratios[0]:.3f}"
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    lo, hi = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
    return f"{statistics.median(ratios):.3f} [{lo:.2f}-{hi:.2f}]"


if __name__ == "__main__":
    main()
