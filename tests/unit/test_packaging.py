"""Packaging: one `framefleet` import namespace in the wheel, and imports that point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lower layers never import higher ones: scoring ← config ← tasks ← workers (README, Layout).
LAYERS = ("scoring", "config", "tasks", "workers")


def test_the_wheel_installs_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("framefleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top - {"framefleet"} == {next(t for t in top if t.endswith(".dist-info"))}  # plus its metadata only
    for layer in LAYERS:
        assert f"framefleet/{layer}/__init__.py" in names
    assert "framefleet/tasks/providers/image_models.json" in names
    assert "framefleet/workers/eval_data/storyboards.jsonl" in names
    assert not any(name.startswith("framefleet/tests/") for name in names)


def test_no_dependency_installs_a_top_level_framefleet_package():
    clashes = {dist.metadata["Name"] for dist in distributions() if dist.metadata["Name"] != "framefleet"
               for path in dist.files or [] if path.parts and path.parts[0] == "framefleet"}
    assert not clashes


def imported_layers(folder: Path) -> dict[str, set[str]]:
    """For each module of a folder, the framefleet layers it imports (statically, anywhere in it)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        layers = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            layers |= {name.split(".")[1] for name in names if name.startswith("framefleet.")}
        found[str(path.relative_to(ROOT))] = layers
    return found


def test_imports_point_one_way():
    for position, layer in enumerate(LAYERS):
        higher = set(LAYERS[position + 1:])
        offenders = {module: sorted(layers & higher) for module, layers in imported_layers(ROOT / layer).items()
                     if layers & higher}
        assert offenders == {}, f"{layer} imports a higher layer"


# Inside tasks/, by rank: the job model at the bottom; artifacts, providers, the worker runtime and
# the Celery app on it; coordination above them; the steps above that; the task entry points on
# top (README, Layout). A module imports only from its own rank or below.
TASK_RANKS = {"job": 0, "artifacts": 1, "providers": 1, "runtime": 1, "app": 1, "coordination": 2, "steps": 3,
              "entry": 4}


def task_part(module: str) -> str:
    """``framefleet.tasks.steps.select`` → ``steps``; ``tasks/job/state.py`` → ``job``."""
    parts = module.replace("/", ".").removesuffix(".py").split(".")
    return parts[parts.index("tasks") + 1]


def test_inside_tasks_imports_point_down_the_ranks():
    offenders = {}
    for path in (ROOT / "tasks").rglob("*.py"):
        if path.name == "__init__.py" and path.parent.name == "tasks":
            continue
        mine = TASK_RANKS[task_part(str(path.relative_to(ROOT)))]
        tree = ast.parse(path.read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        higher = sorted({task_part(name) for name in imported if name.startswith("framefleet.tasks.")
                         and TASK_RANKS[task_part(name)] > mine})
        if higher:
            offenders[str(path.relative_to(ROOT))] = higher
    assert offenders == {}


def test_scoring_imports_no_celery_redis_or_s3():
    for path in (ROOT / "scoring").rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
                  {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m.split(".")[0] for m in modules} & {"celery", "kombu", "redis", "boto3"}, path
