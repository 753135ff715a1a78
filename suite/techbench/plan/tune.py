"""Fair comparisons: search each technique's hyper-parameters on validation, rerun the chosen
setting on fresh seeds (the protocol of DeepOBS, Schmidt et al. 2021 and AlgoPerf).

A matrix with a ``[tune]`` section (see :func:`parse_tune`) runs in two phases:

1. **search**: every base configuration of the matrix (a technique in a context: dataset, model,
   the axes not tuned, the data seed) becomes ``budget`` search points of its technique's search
   space (:mod:`techbench.plan.search`; the points depend on the space only, so ids are stable), each
   run on the search seeds; with ``studies = k`` the search is repeated with other points and
   seeds (AlgoPerf's tuning variance).
2. **select and finals**: per group (technique and context) and study, the point with the best
   mean validation score over its seeds (``select``: the last epoch's value, or the best epoch's)
   is chosen, and run again on ``final_seeds`` fresh seeds.

The :class:`TunePlan` (groups, points, search and final seeds) is a pure function of the matrix,
written to ``OUT/tune.json``; :func:`select` is a pure function of the plan and the *validation*
rows of the stored search trials: the test split never enters it, and a killed run that resumes
selects the same thing. A group whose search trials all diverged or failed falls back to the
spec's defaults for its searched hyper-parameters, flagged ``all_diverged``, so its finals still
run and the report says so.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..schema import AXES, AXIS_FAMILY, FINISHED, Trial, metric_series, trial_id
from ..techniques.spec import Param, format_technique_arg
from .search import METHODS, Dimension, search_points

TUNE_KEYS = (
    "search",
    "method",
    "budget",
    "seeds",
    "select",
    "metric",
    "mode",
    "final_seeds",
    "studies",
)
SELECT_RULES = ("final", "best")
DECLARED = "declared"
EDGE = 0.1
"""A selected value in the outer 10% of its search range (on its scale) is flagged as at the edge:
the optimum may lie outside the range."""
PLAN_FILE = "tune.json"
MAX_POINTS = 10_000
MAX_STUDIES = 100


@dataclass(frozen=True)
class TuneSpec:
    """A validated ``[tune]`` section.

    ``space[(axis, technique)]`` holds the searched hyper-parameters of that technique;
    ``seeds`` the search seeds of study 0 (study j shifts them by j * (max + 1));
    ``final_seeds`` never overlap any study's search seeds; ``stride`` (0: max seed + 1) is kept
    by :meth:`narrowed` so a narrowed study's seeds are the full matrix's.
    """

    space: Mapping[tuple[str, str], tuple[Param, ...]]
    method: str = "sobol"
    budget: int = 16
    seeds: tuple[int, ...] = (0,)
    select: str = "final"
    metric: str = "val_acc"
    mode: str = "max"
    final_seeds: tuple[int, ...] = tuple(range(1, 11))
    studies: int = 1
    stride: int = 0

    @property
    def axes(self) -> list[str]:
        return [a for a in AXES if any(ax == a for ax, _ in self.space)]

    def study_seeds(self, study: int) -> list[int]:
        stride = self.stride or max(self.seeds) + 1
        return [s + study * stride for s in self.seeds]

    def narrowed(self, search: Sequence[int], final: Sequence[int]) -> TuneSpec:
        """This spec with fewer seeds in either phase; later studies keep their seeds."""
        stride = self.stride or max(self.seeds) + 1
        return replace(self, seeds=tuple(search), final_seeds=tuple(final), stride=stride)

    def with_seed_count(self, n: int) -> TuneSpec:
        """``--seeds n``: at most ``n`` search seeds (the first ones) and ``n`` final seeds (the
        first ones, then fresh seeds no study searches on)."""
        used = {s for j in range(self.studies) for s in self.study_seeds(j)}
        final = list(self.final_seeds[:n])
        fresh = (s for s in itertools.count() if s not in used and s not in self.final_seeds)
        final += itertools.islice(fresh, n - len(final))
        return self.narrowed(self.seeds[:n], final)

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary (in ``matrix.json``)."""
        return {
            "method": self.method,
            "budget": self.budget,
            "seeds": list(self.seeds),
            "select": self.select,
            "metric": self.metric,
            "mode": self.mode,
            "final_seeds": list(self.final_seeds),
            "studies": self.studies,
            **({"stride": self.stride} if self.stride else {}),
            "search": {
                f"{axis}={name}": [p.name for p in params]
                for (axis, name), params in sorted(self.space.items())
            },
        }


# -- parsing ----------------------------------------------------------------------------------


def parse_tune(
    p: Any,
    raw: Any,
    techniques: Mapping[str, list[str]],
    target: Mapping[str, Any],
    seeds_given: bool,
) -> TuneSpec | None:
    """Validate ``[tune]``; problems go to the matrix parser ``p`` (file, key, what, hint).

    ``techniques[axis]``: the technique names that can appear on each axis (from ``[axes]``,
    ``[defaults]``, ``[[include]]`` or the default config); ``target``: the matrix's target.
    """
    if not isinstance(raw, Mapping):
        p.problem("tune", "must be a table", "write [tune] ...")
        return None
    p.unknown_keys(raw, TUNE_KEYS, "tune")
    n0 = len(p.problems)
    if seeds_given:
        p.problem(
            "seeds",
            "a tuned matrix takes its seeds from [tune]",
            "use tune.seeds (per search trial) and tune.final_seeds",
        )
    method = raw.get("method", "sobol")
    if method not in METHODS:
        from ..errors import did_you_mean

        p.problem("tune.method", f"must be one of {', '.join(METHODS)}, got {method!r}",
                  did_you_mean(str(method), METHODS))  # fmt: skip
    budget = p.int_value(raw.get("budget", 16), "tune.budget", 1, high=MAX_POINTS)
    studies = p.int_value(raw.get("studies", 1), "tune.studies", 1, high=MAX_STUDIES)
    seeds = p.seed_list(raw.get("seeds", 1), "tune.seeds")
    select = raw.get("select", "final")
    if select not in SELECT_RULES:
        p.problem("tune.select", f"must be 'final' or 'best' (epoch), got {select!r}")
    metric = raw.get("metric")
    if metric is None:
        metric = target["metric"] if str(target["metric"]).startswith("val_") else "val_loss"
    mode = raw.get("mode")
    if not isinstance(metric, str) or metric_series(metric)[0] != "val" or "_" not in metric:
        p.problem("tune.metric", f"selection uses validation only: give a val_ metric, got {metric!r}",
                  "e.g. val_acc or val_loss")  # fmt: skip
    if mode is None:
        same = metric == target["metric"]
        mode = target["mode"] if same else ("min" if str(metric).endswith("loss") else "max")
    elif mode not in ("max", "min"):
        p.problem("tune.mode", f"must be 'max' or 'min', got {mode!r}")
    space = _parse_space(p, raw.get("search"), techniques)
    final_raw = raw.get("final_seeds", 10)
    final: list[int] = []
    if len(p.problems) == n0 and seeds is not None and studies is not None:
        assert isinstance(seeds, list)
        stride = max(seeds) + 1
        used = {s + j * stride for j in range(studies) for s in seeds}
        if isinstance(final_raw, int) and not isinstance(final_raw, bool):
            if not 1 <= final_raw <= 10_000:
                p.problem("tune.final_seeds", f"a count must be in [1, 10000], got {final_raw}")
            final = [s for s in range(final_raw + len(used)) if s not in used][:final_raw]
        else:
            given = p.seed_list(final_raw, "tune.final_seeds")
            if isinstance(given, list):
                clash = sorted(set(given) & used)
                if clash:
                    p.problem("tune.final_seeds", f"overlap the search seeds: {clash}",
                              "final runs need fresh seeds")  # fmt: skip
                final = given
    if len(p.problems) > n0:
        return None
    assert seeds is not None and budget is not None and studies is not None
    return TuneSpec(
        space=space,
        method=str(method),
        budget=budget,
        seeds=tuple(int(s) for s in seeds),
        select=str(select),
        metric=str(metric),
        mode=str(mode),
        final_seeds=tuple(final),
        studies=studies,
    )


def _parse_space(
    p: Any, raw: Any, techniques: Mapping[str, list[str]]
) -> dict[tuple[str, str], tuple[Param, ...]]:
    """``(axis, technique) -> searched params``; default: every declared range of every technique
    on the compared axes (those with more than one technique, dataset excluded)."""
    if raw is None:
        compared = [a for a, names in techniques.items() if a != "dataset" and len(names) > 1]
        raw = {a: DECLARED for a in compared}
    if not isinstance(raw, Mapping):
        p.problem("tune.search", "must be a table of axis = [hyper-parameter names]",
                  'e.g. optimizer = ["lr"]')  # fmt: skip
        return {}
    p.unknown_keys(raw, list(AXIS_FAMILY), "tune.search")
    space: dict[tuple[str, str], tuple[Param, ...]] = {}
    for axis, entry in raw.items():
        if axis not in AXIS_FAMILY:
            continue
        path = f"tune.search.{axis}"
        names = techniques.get(axis, [])
        per: dict[str, Any]
        if isinstance(entry, Mapping):
            per = dict(entry)
            for key in per:
                if key != "*" and key not in names:
                    from ..errors import did_you_mean

                    p.problem(f"{path}.{key}", f"{key!r} is not a technique of axis {axis}",
                              did_you_mean(key, names) or f"techniques: {', '.join(names)}")  # fmt: skip
            per = {n: per.get(n, per.get("*", DECLARED)) for n in names}
            where = {n: f"{path}.{n}" if n in entry else path for n in names}
        else:
            per = {n: entry for n in names}
            where = {n: path for n in names}
        listed_anywhere: set[str] = set()
        declared_by: set[str] = set()
        for name in names:
            spec = p.spec(axis, name, path)
            if spec is None:
                continue
            ranged = [q for q in spec.params if q.search is not None]
            declared_by.update(q.name for q in ranged)
            want = per[name]
            if want == DECLARED:
                space[(axis, name)] = tuple(ranged)
                continue
            if not isinstance(want, list) or not all(isinstance(x, str) for x in want):
                p.problem(where[name], f'must be a list of hyper-parameter names or "{DECLARED}", '
                          f"got {want!r}")  # fmt: skip
                continue
            listed_anywhere.update(want)
            chosen = []
            for hp in want:
                q = next((q for q in spec.params if q.name == hp), None)
                if q is None or q.search is None:
                    if isinstance(entry, Mapping):
                        why = "unknown" if q is None else "declares no search range"
                        p.problem(where[name], f"{spec.qualified_name}: {hp!r} {why}",
                                  "ranged: " + (", ".join(x.name for x in ranged) or "none"))  # fmt: skip
                    continue
                chosen.append(q)
            space[(axis, name)] = tuple(chosen)
        if not isinstance(entry, Mapping) and isinstance(entry, list):
            for hp in sorted(listed_anywhere - declared_by):
                p.problem(path, f"no technique of axis {axis} declares a search range for {hp!r}",
                          "ranged: " + (", ".join(sorted(declared_by)) or "none"))  # fmt: skip
    return space


# -- the plan ---------------------------------------------------------------------------------


def _set_point(config: dict[str, Any], point: Mapping[str, Any]) -> None:
    for key, value in point.items():
        axis, name = key.split(".", 1)
        config[axis]["params"][name] = value


def _strip(config: Mapping[str, Any], dims: Sequence[Dimension]) -> dict[str, Any]:
    out = copy.deepcopy(dict(config))
    for d in dims:
        out[d.axis]["params"].pop(d.param.name, None)
    return out


@dataclass
class Group:
    """One technique in one context: its search space, base config and per-study points.

    On a scale ladder (:mod:`techbench.plan.scale`) ``rung`` is the base config's rung and the
    context ends in ``rung=k``; under ``transfer = "base"`` a group above rung 0 has no points
    and ``source``, the id of the rung-0 group whose selection its finals take. ``finals`` is
    False for a rung-0 group searched only for the rungs ``--filter`` kept."""

    id: str
    technique: str
    context: str
    dims: list[Dimension]
    base: dict[str, Any]
    points: list[list[dict[str, Any]]]  # [study][point] -> {dim key: value}
    rung: int | None = None
    source: str | None = None
    finals: bool = True

    @property
    def ladder_context(self) -> str:
        """The context without its ``rung=k``: what the rungs of one ladder share."""
        if self.rung is None:
            return self.context
        return self.context.removesuffix(f"rung={self.rung}").rstrip()

    def config(self, point: Mapping[str, Any], seed: int, follow: bool) -> dict[str, Any]:
        c = copy.deepcopy(self.base)
        _set_point(c, point)
        c["seed"] = seed
        if follow:
            c["data_seed"] = seed
        return c

    def trial(self, point: Mapping[str, Any], seed: int, follow: bool) -> Trial:
        """The planned trial at ``point`` and ``seed`` (its id is where it is stored)."""
        return Trial.of(self.config(point, seed, follow))

    def defaults(self) -> dict[str, Any]:
        return {d.key: d.param.default for d in self.dims}


@dataclass
class TunePlan:
    """Everything both phases need, fixed by the matrix alone (see the module docstring)."""

    spec: TuneSpec
    groups: list[Group]
    follow: bool = False  # data_seed = seed
    transfer: str | None = None  # a scale ladder's [scale] transfer

    # expansion ---------------------------------------------------------------------------------

    def search_trials(self) -> list[Trial]:
        """Every search trial, in a stable order (groups, studies, points, seeds)."""
        out = []
        for g in self.groups:
            for study, points in enumerate(g.points):
                for point in points:
                    for seed in self.spec.study_seeds(study):
                        out.append(g.trial(point, seed, self.follow))
        return out

    def n_finals(self) -> int:
        """Final trials at most (studies that select the same point share them)."""
        return sum(g.finals for g in self.groups) * self.spec.studies * len(self.spec.final_seeds)

    def final_trials(self, selection: Sequence[Selection]) -> list[Trial]:
        """The final trials of the selected (group, study) pairs, without duplicates."""
        by_id = {g.id: g for g in self.groups}
        out, seen = [], set()
        for s in selection:
            g = by_id[s.group]
            if not g.finals:
                continue
            for seed in self.spec.final_seeds:
                trial = g.trial(s.point, seed, self.follow)
                if trial.id not in seen:
                    seen.add(trial.id)
                    out.append(trial)
        return out

    # serialisation ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "tune": self.spec.describe(),
            "follow_seed": self.follow,
            **({"transfer": self.transfer} if self.transfer else {}),
            "groups": [
                {
                    "id": g.id,
                    "technique": g.technique,
                    "context": g.context,
                    "dims": [
                        {
                            "key": d.key,
                            "type": d.param.type.__name__,
                            "search": list(d.param.search or ()),
                            "scale": d.param.scale,
                            "default": d.param.default,
                        }
                        for d in g.dims
                    ],
                    "base": g.base,
                    "points": g.points,
                    **({"rung": g.rung} if g.rung is not None else {}),
                    **({"source": g.source} if g.source else {}),
                    **({} if g.finals else {"finals": False}),
                }
                for g in self.groups
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TunePlan:
        """Inverse of :meth:`to_json` (the report reads ``tune.json`` with it)."""
        t = data["tune"]
        groups = []
        for g in data["groups"]:
            dims = []
            for d in g["dims"]:
                axis, name = d["key"].split(".", 1)
                kind = int if d["type"] == "int" else float
                param = Param(
                    name=name,
                    type=kind,
                    default=d["default"],
                    search=(float(d["search"][0]), float(d["search"][1])),
                    scale=d["scale"],
                )
                dims.append(Dimension(axis, param))
            groups.append(
                Group(
                    g["id"],
                    g["technique"],
                    g["context"],
                    dims,
                    g["base"],
                    g["points"],
                    g.get("rung"),
                    g.get("source"),
                    bool(g.get("finals", True)),
                )
            )
        spec = TuneSpec(
            space={},
            method=t["method"],
            budget=t["budget"],
            seeds=tuple(t["seeds"]),
            select=t["select"],
            metric=t["metric"],
            mode=t["mode"],
            final_seeds=tuple(t["final_seeds"]),
            studies=t["studies"],
            stride=int(t.get("stride", 0)),
        )
        return cls(spec, groups, bool(data.get("follow_seed")), data.get("transfer"))

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write ``OUT/tune.json`` atomically. A plan already there with the same search protocol
        keeps its groups and final seeds (a run narrowed by ``--filter`` adds to the store's plan
        instead of hiding what the full run stored); another protocol is replaced."""
        from ..store.writer import ResultStore

        store = ResultStore(out).ensure()
        data = _merged(self.to_json(), store.root / PLAN_FILE)
        tmp = store.scratch_path(PLAN_FILE)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, store.root / PLAN_FILE)
        return store.root / PLAN_FILE


def _protocol(data: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a plan's selection depends on besides its groups and final seeds."""
    t = data["tune"]
    stride = t.get("stride") or max(t["seeds"]) + 1
    keys = ("method", "budget", "seeds", "select", "metric", "mode", "studies")
    follow, transfer = bool(data.get("follow_seed")), data.get("transfer")
    return (*(json.dumps(t[k]) for k in keys), stride, follow, transfer)


def _merged(new: dict[str, Any], path: Path) -> dict[str, Any]:
    """``new`` with the groups and final seeds of the plan at ``path`` when both share one
    search protocol (:func:`_protocol`)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if _protocol(old) != _protocol(new):
            return new
        have = {g["id"] for g in old["groups"]}
        finals = {g["id"] for g in new["groups"] if g.get("finals", True)}
        kept = [{k: v for k, v in g.items() if k != "finals" or g["id"] not in finals}
                for g in old["groups"]]  # fmt: skip
        groups = [*kept, *(g for g in new["groups"] if g["id"] not in have)]
        seeds = [*old["tune"]["final_seeds"]]
        seeds += [s for s in new["tune"]["final_seeds"] if s not in seeds]
    except (OSError, ValueError, KeyError, TypeError):
        return new
    return {**new, "groups": groups, "tune": {**new["tune"], "final_seeds": seeds}}


def read_plan(out: str | os.PathLike[str]) -> TunePlan | None:
    """The plan stored in ``OUT/tune.json``, or None when the store is not a tuned run."""
    path = Path(out) / PLAN_FILE
    try:
        return TunePlan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_plan(
    spec: TuneSpec,
    bases: Iterable[Mapping[str, Any]],
    follow: bool,
    keep: Callable[[Mapping[str, Any]], bool] = lambda c: True,
    ladder: Mapping[str, Mapping[str, Any]] | None = None,
    transfer: str | None = None,
) -> TunePlan:
    """Group the matrix's untuned expansion (one seed) into techniques in contexts, with points;
    only the groups of configs ``keep`` accepts (``--filter``) get in, labelled as in the full
    plan.

    A scale ladder passes ``ladder`` (trial id of each base config -> the same config at rung 0,
    :meth:`techbench.plan.scale.ScaleSpec.rung_zero`): contexts are labelled by rung 0 plus
    ``rung=k``; with ``transfer = "base"`` a group above rung 0 gets no search points and takes
    its rung-0 group's selection (:func:`select`), which is planned (for its search only, when
    ``keep`` drops it) whenever a kept group needs it."""
    tuned = spec.axes
    entries: dict[str, tuple[list[Dimension], dict[str, Any], dict[str, Any]]] = {}
    sources: dict[str, str] = {}
    kept: set[str] = set()
    for config in bases:
        dims = [
            Dimension(axis, q)
            for axis in tuned
            for q in spec.space.get((axis, config[axis]["name"]), ())
        ]
        base = _group_base(config, dims, follow)
        gid = trial_id(base)
        zero = ladder.get(trial_id(config)) if ladder else None
        shown = base if zero is None else _group_base(zero, dims, follow)
        entries.setdefault(gid, (dims, base, shown))
        if transfer == "base" and trial_id(shown) != gid:
            sources[gid] = trial_id(shown)
        if keep(config):
            kept.add(gid)
    needed = kept | {sources[g] for g in kept if g in sources}
    configs = [shown for _, _, shown in entries.values()]
    varying = [a for a in AXES if len({json.dumps(c[a], sort_keys=True) for c in configs}) > 1]
    tech_axes = [a for a in varying if a in tuned] or tuned
    ctx_axes = [a for a in varying if a not in tech_axes]
    if len({c["data_seed"] for c in configs}) > 1:
        ctx_axes.append("data_seed")
    groups = []
    for gid, (dims, base, shown) in entries.items():
        if gid not in needed:
            continue
        technique = " ".join(_label(shown, a, len(tech_axes) > 1) for a in tech_axes)
        context = " ".join(_label(shown, a, True) for a in ctx_axes)
        rung = int(base["scale"]["rung"]) if base.get("scale") else None
        if rung is not None:
            context = f"{context} rung={rung}".lstrip()
        label = " ".join(f"{a}={base[a]['name']}" for a in tuned)
        source = sources.get(gid)
        points = [
            [] if source else search_points(dims, spec.method, spec.budget, label, study)
            for study in range(spec.studies)
        ]
        group = Group(gid, technique, context, dims, base, points, rung, source, gid in kept)
        groups.append(group)
    return TunePlan(spec, groups, follow, transfer)


def _group_base(config: Mapping[str, Any], dims: Sequence[Dimension], follow: bool) -> dict:
    """A group's base config: ``config`` without its searched values, at seed 0."""
    base = _strip(config, dims)
    base["seed"] = 0
    if follow:
        base["data_seed"] = 0
    return base


def _label(config: Mapping[str, Any], axis: str, named: bool) -> str:
    value = config[axis]
    text = (
        format_technique_arg(value["name"], value["params"])
        if isinstance(value, Mapping)
        else str(value)
    )
    return f"{axis}={text}" if named else text


# -- selection --------------------------------------------------------------------------------


@dataclass
class Selection:
    """The chosen setting of one group in one study, and how it was chosen."""

    group: str
    study: int
    point: dict[str, Any]
    index: int | None  # position among the study's points; None for the all-diverged fallback
    score: float  # mean validation score over the search seeds (nan for the fallback)
    n_points: int
    n_bad: int  # points with a diverged or failed seed
    all_diverged: bool = False
    edges: dict[str, str] = field(default_factory=dict)  # dim key -> "low"/"high"
    source: str | None = None  # the rung-0 group it was transferred from (scale ladders)


def trial_score(status: str | None, values: Sequence[float], rule: str, mode: str) -> float:
    """A search trial's score, higher is better (``-value`` for min metrics).

    ``values``: the validation series in epoch order. Diverged or failed trials, and trials
    without the metric, score ``-inf`` (never selected over a finite score).
    """
    sign = 1.0 if mode == "max" else -1.0
    finite = [sign * v for v in values if v == v]
    if status != "completed" or not finite or len(finite) != len(values):
        return -math.inf
    return max(finite) if rule == "best" else finite[-1]


def validation_series(
    out: str | os.PathLike[str], ids: Iterable[str], metric: str
) -> dict[str, tuple[str | None, list[float]]]:
    """``trial_id -> (status, validation values in epoch order)`` of the stored ``ids``.

    Reads only the rows of the validation split: nothing of the test split reaches selection.
    """
    from ..store.reader import load_metrics
    from ..store.writer import ResultStore

    ids = list(ids)
    statuses = ResultStore(out).statuses()
    stored = [t for t in ids if t in statuses]
    split, name = metric_series(metric)
    assert split == "val"
    out_map: dict[str, tuple[str | None, list[float]]] = {t: (statuses[t], []) for t in stored}
    if not stored:
        return out_map
    frame = load_metrics(out, stored, keep_step_loss=False)
    frame = frame[(frame["split"] == "val") & (frame["metric"] == name)]
    frame = frame.sort_values(["trial_id", "epoch", "step"], kind="stable")
    for tid, part in frame.groupby("trial_id", observed=True, sort=False):
        out_map[str(tid)] = (statuses[str(tid)], [float(v) for v in part["value"]])
    return out_map


def select(
    plan: TunePlan, series: Mapping[str, tuple[str | None, list[float]]]
) -> tuple[list[Selection], list[tuple[str, int]]]:
    """``(selections, pending)``: the best point per (group, study) from validation series;
    ``pending`` lists the (group, study) pairs whose search is not fully stored yet.

    A point's score is the mean of its seeds' :func:`trial_score`; ties go to the earlier point.
    """
    spec = plan.spec
    chosen: list[Selection] = []
    pending: list[tuple[str, int]] = []
    for g in plan.groups:
        if g.source is not None:
            continue
        for study, points in enumerate(g.points):
            seeds = spec.study_seeds(study)
            scores: list[float] = []
            missing = False
            for point in points:
                per_seed = []
                for seed in seeds:
                    tid = g.trial(point, seed, plan.follow).id
                    if tid not in series or series[tid][0] not in (*FINISHED, "failed"):
                        missing = True
                        break
                    status, values = series[tid]
                    per_seed.append(trial_score(status, values, spec.select, spec.mode))
                if missing:
                    break
                scores.append(sum(per_seed) / len(per_seed))
            if missing:
                pending.append((g.id, study))
                continue
            n_bad = sum(s == -math.inf for s in scores)
            sign = 1.0 if spec.mode == "max" else -1.0
            if n_bad == len(scores):
                point = g.defaults()
                sel = Selection(g.id, study, point, None, math.nan, len(scores), n_bad, True)
            else:
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))
                point = dict(points[best])
                sel = Selection(g.id, study, point, best, sign * scores[best], len(scores), n_bad)
            sel.edges = edge_flags(g.dims, sel.point)
            chosen.append(sel)
    return _transferred(plan, chosen, pending)


def _transferred(
    plan: TunePlan, chosen: list[Selection], pending: list[tuple[str, int]]
) -> tuple[list[Selection], list[tuple[str, int]]]:
    """``chosen`` and ``pending`` with the groups that take a rung-0 group's selection
    (``transfer = "base"``): its point, score and flags, under their own group id."""
    own = {(s.group, s.study): s for s in chosen}
    for g in plan.groups:
        if g.source is None:
            continue
        for study in range(plan.spec.studies):
            src = own.get((g.source, study))
            if src is None:
                pending.append((g.id, study))
                continue
            point = dict(src.point)
            chosen.append(
                replace(src, group=g.id, point=point, edges=dict(src.edges), source=g.source)
            )
    return chosen, pending


def edge_flags(dims: Sequence[Dimension], point: Mapping[str, Any]) -> dict[str, str]:
    """``dim key -> "low"/"high"`` for values in the outer :data:`EDGE` of their range."""
    flags = {}
    for d in dims:
        u = d.param.to_unit(point[d.key])
        if u <= EDGE:
            flags[d.key] = "low"
        elif u >= 1 - EDGE:
            flags[d.key] = "high"
    return flags


def select_stored(
    plan: TunePlan, out: str | os.PathLike[str]
) -> tuple[list[Selection], list[tuple[str, int]]]:
    """:func:`select` over the search trials stored in ``out``."""
    ids = [t.id for t in plan.search_trials()]
    return select(plan, validation_series(out, ids, plan.spec.metric))


# -- running both phases ----------------------------------------------------------------------


class TwoPhases:
    """What a run of two phases reports, read from its phases' run results (the second is None
    until it ran): tuning's search and finals, a seed plan's pilot and stage 2."""

    def phases(self) -> tuple[Any, Any]:
        raise NotImplementedError

    @property
    def interrupted(self) -> bool:
        first, second = self.phases()
        return bool(first.interrupted or (second and second.interrupted))

    @property
    def exit_signal(self) -> int:
        """The signal that stopped the phase that stopped (0: both ran to the end)."""
        first, second = self.phases()
        return int(getattr(second or first, "exit_signal", 0))

    @property
    def missing(self) -> int:
        """Trials of either phase without a stored result."""
        first, second = self.phases()
        return int(first.missing) + (int(second.missing) if second else 0)


@dataclass
class TuneResult(TwoPhases):
    """What :func:`run_tuned` did: the two phases' results and the selection."""

    search: Any
    finals: Any = None
    selection: list[Selection] = field(default_factory=list)
    pending: list[tuple[str, int]] = field(default_factory=list)

    def phases(self) -> tuple[Any, Any]:
        return self.search, self.finals


def run_tuned(
    plan: TunePlan,
    out: str | os.PathLike[str],
    run_phase: Callable[[list[Trial], str], Any],
    shard: Callable[[list[Trial]], list[Trial]] = lambda c: c,
    note: Callable[[str], None] = print,
) -> TuneResult:
    """Search, select, finals. ``run_phase(trials, phase)`` runs trials into ``out`` (e.g. a
    partial of :func:`techbench.execute.execute`) and returns its result (with ``interrupted``);
    ``shard`` keeps this process's part of each phase."""
    plan.write(out)
    search = shard(plan.search_trials())
    note(f"tune: search phase, {len(search)} trials")
    result = TuneResult(run_phase(search, "search"))
    if result.search.interrupted:
        return result
    result.selection, result.pending = select_stored(plan, out)
    by_id = {g.id: g for g in plan.groups}
    for s in result.selection:
        g = by_id[s.group]
        if s.all_diverged:
            note(
                f"tune: {g.technique} {g.context}: all {s.n_points} search points diverged or "
                "failed; finals run at the spec defaults"
            )
    if result.pending:
        note(f"tune: {len(result.pending)} searches not complete (other shards?): finals wait")
    finals = shard(plan.final_trials(result.selection))
    note(f"tune: final phase, {len(finals)} trials ({len(plan.spec.final_seeds)} fresh seeds)")
    result.finals = run_phase(finals, "finals")
    return result
