"""Fixtures for the deploy checks: the real tools tools/bootstrap installs (Helm, checkov,
kubernetes-validate, yamllint, shellcheck, hadolint, promtool) and the chart rendered with them.

    def test_something(render):
        objects = render("examples/laptop-cpu.yaml")   # [dict], one per Kubernetes object
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
CHART = REPOSITORY / "helm" / "flotilla"
TOOLS_DIR = Path(os.environ.get("FLOTILLA_TOOLS_DIR", "/opt/flotilla-tools"))
# The values files every check renders: the defaults, and every example.
VALUES_FILES = [None, *sorted(str(p.relative_to(CHART)) for p in (CHART / "examples").glob("*.yaml"))]


def tool(name: str) -> str:
    """Path of a deploy tool: tools/bootstrap puts Helm and checkov under $FLOTILLA_TOOLS_DIR."""
    for candidate in (TOOLS_DIR / "bin" / name, TOOLS_DIR / name / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run tools/bootstrap/bootstrap")
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def helm_template(values_file: str | None, *extra: str) -> subprocess.CompletedProcess:
    command = [tool("helm"), "template", "flotilla", str(CHART), "--namespace", "flotilla"]
    if values_file:
        command += ["-f", str(CHART / values_file) if not Path(values_file).is_absolute() else values_file]
    return run([*command, *extra])


@pytest.fixture(scope="session")
def render():
    """Renders the chart with a values file (relative to the chart, or absolute) into its objects."""
    cache: dict = {}

    def render_values(values_file: str | None, *extra: str) -> list[dict]:
        key = (values_file, extra)
        if key not in cache:
            result = helm_template(values_file, *extra)
            assert result.returncode == 0, f"helm template {values_file}: {result.stderr}"
            cache[key] = [document for document in yaml.safe_load_all(result.stdout) if document]
        return cache[key]

    return render_values


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload."""
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
