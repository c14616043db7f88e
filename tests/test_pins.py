"""One list of versions: pyproject.toml's exact pins.

The Makefile (and so CI and developers) and both docker images install from
pyproject.toml; a version named anywhere else must be the pinned one, and the
CUDA image's base tag carries torch's version.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")

REPO = Path(__file__).resolve().parents[1]
INSTALLERS = ["Makefile", ".ci/run", "docker/Dockerfile.cuda", "docker/Dockerfile.cpu"]

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]+\])?==([0-9][A-Za-z0-9.+!]*)")
MENTION = re.compile(r"(?<![\w.-])([A-Za-z][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!]*)")  # pip's name==version
TORCH_BASE = re.compile(r"^FROM\s+pytorch/pytorch:([0-9][0-9.]*)-", re.M)  # the image's torch version
PYTHON_BASE = re.compile(r"^FROM\s+python:(\d+)\.(\d+)", re.M)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements() -> list[str]:
    p = project()
    return p["dependencies"] + [req for extra in p.get("optional-dependencies", {}).values() for req in extra]


def pins() -> dict[str, str]:
    return {normalize(m[1]): m[3] for m in map(PIN.fullmatch, requirements()) if m}


def mismatches(text: str, pinned: dict[str, str]) -> list[str]:
    """Each version `text` names that is not pyproject.toml's pin for that package."""
    named = [(normalize(name), version) for name, version in MENTION.findall(text)]
    named += [("torch", version) for version in TORCH_BASE.findall(text)]
    return [
        f"{name}=={version} (pyproject.toml: {pinned.get(name, 'not a dependency')})"
        for name, version in named
        if pinned.get(name) != version
    ]


def test_every_dependency_is_pinned_exactly():
    reqs = requirements()
    assert reqs
    assert [req for req in reqs if not PIN.fullmatch(req)] == []


def test_installers_name_only_the_pinned_versions():
    pinned = pins()
    for path in INSTALLERS:
        assert mismatches((REPO / path).read_text(), pinned) == [], path


def test_cuda_image_is_built_on_the_pinned_torch():
    assert TORCH_BASE.findall((REPO / "docker/Dockerfile.cuda").read_text()) == [pins()["torch"]]


def test_cpu_image_has_a_python_the_project_supports():
    floor = re.fullmatch(r">=(\d+)\.(\d+)", project()["requires-python"])
    [version] = PYTHON_BASE.findall((REPO / "docker/Dockerfile.cpu").read_text())
    assert tuple(map(int, version)) >= tuple(map(int, floor.groups()))


def test_every_installer_installs_from_pyproject():
    """Each installs the project itself (and so its pins), not a list of its own."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[dev\]'", makefile)
    assert re.search(r"^\s*make test$", (REPO / ".ci/run").read_text(), re.M)
    assert re.search(r"^RUN make venv$", (REPO / "docker/Dockerfile.cpu").read_text(), re.M)
    assert re.search(r"^RUN pip install [^\n]*\s\.$", (REPO / "docker/Dockerfile.cuda").read_text(), re.M)


def test_mismatches_are_found():
    pinned = {"torch": "2.14.1", "deepspeed": "0.19.8"}
    text = "FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel\nRUN pip install DeepSpeed==0.18.0 numpy==2.0.0 torch==2.14.1\n"
    assert mismatches(text, pinned) == [
        "deepspeed==0.18.0 (pyproject.toml: 0.19.8)",
        "numpy==2.0.0 (pyproject.toml: not a dependency)",
        "torch==2.13.0 (pyproject.toml: 2.14.1)",
    ]
