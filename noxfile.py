"""nox sessions: tests, lint, demo, bench matrices, microbench, report, ray.

Each session installs techbench into its own virtualenv with ``scripts/install.sh`` (CPU torch
when the environment has none). Matrix sessions are parametrized and tagged ``quick``/``full``:
``nox -t quick`` runs the quick ones.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def install(session: nox.Session, *, test: bool = False) -> None:
    """scripts/install.sh into the session's virtualenv (``test``: with the test tools)."""
    flags = ["--test"] if test else []
    session.run("bash", "scripts/install.sh", *flags, env={"PYTHON": "python"}, external=True)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite (the README's test command)."""
    install(session, test=True)
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Ruff (lint + format check) and mypy on the package."""
    session.install("ruff>=0.6", "mypy>=1.10")
    session.run("ruff", "check", "suite", "plugins", "tests", "benchmarks", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "suite", "plugins", "tests", "benchmarks", "noxfile.py"
    )
    install(session)
    session.run("mypy")


@nox.session(python="3.11")
def microbench(session: nox.Session) -> None:
    """pytest-benchmark: fast vs reference vs torch's own, per technique."""
    install(session, test=True)
    session.run(
        "pytest",
        "benchmarks",
        "--benchmark-enable",
        "--benchmark-only",
        "--benchmark-columns=median,iqr,rounds",
        "-q",
        *session.posargs,
    )


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The README's main job: the demo matrix, then its report."""
    install(session)
    session.run("techbench", "run", "demo", "--out", "results/demo", "--report", "reports/demo")


@nox.session(python="3.11")
@nox.parametrize(
    "matrix",
    [
        nox.param("smoke", tags=["quick"]),
        nox.param("demo", tags=["quick"]),
        nox.param("activations", tags=["full"]),
        nox.param("initializers", tags=["full"]),
        nox.param("normalizers", tags=["full"]),
        nox.param("regularizers", tags=["full"]),
        nox.param("optimizers", tags=["full"]),
        nox.param("lecture", tags=["full"]),
        nox.param("charlm", tags=["full"]),
        nox.param("cifar-resnet", tags=["gpu"]),  # needs `techbench data fetch cifar10`
    ],
)
def bench(session: nox.Session, matrix: str) -> None:
    """Run one ready-made matrix into results/<matrix> and report it."""
    install(session)
    session.run(
        "techbench",
        "run",
        matrix,
        "--out",
        f"results/{matrix}",
        "--report",
        f"reports/{matrix}",
        *session.posargs,
    )


@nox.session(python="3.11")
def report(session: nox.Session) -> None:
    """Rebuild a report from stored results: nox -s report -- results/demo."""
    install(session)
    results = session.posargs[0] if session.posargs else "results/demo"
    session.run(
        "techbench", "report", results, "--out", f"reports/{results.rstrip('/').split('/')[-1]}"
    )


@nox.session(python="3.11")
def ray(session: nox.Session) -> None:
    """The Ray executor and --shard: tests on a local 2-CPU cluster, then smoke through Ray."""
    install(session, test=True)
    files = ["tests/test_execute_ray.py", "tests/test_shard_cli.py", "tests/test_shard.py"]
    session.run("pytest", "-q", *files, *session.posargs)
    smoke = ["smoke", "--executor", "ray", "--out", "results/smoke-ray", "--no-progress"]
    session.run("techbench", "run", *smoke)
