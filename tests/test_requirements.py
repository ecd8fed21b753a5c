"""requirements.txt (what ComfyUI-Manager installs) agrees with pyproject.toml."""
from __future__ import annotations

import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Installed by ComfyUI itself; a pack's requirements.txt must never pull it in.
HOST_ONLY = {"torch", "torchvision", "torchaudio"}


def _key(line: str) -> tuple:
    r = Requirement(line)
    return canonicalize_name(r.name), str(r.specifier), tuple(sorted(r.extras)), str(r.marker or "")


def _requirements_txt() -> list[str]:
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_requirements_txt_equals_runtime_dependencies():
    req = {_key(ln) for ln in _requirements_txt()}
    deps = {_key(d) for d in _pyproject()["dependencies"]}
    assert {k for k in req if k[0] in HOST_ONLY} == set(), "requirements.txt must not install torch"
    runtime = {k for k in deps if k[0] not in HOST_ONLY}
    assert req == runtime, (f"requirements.txt and [project.dependencies] differ: only in requirements.txt "
                            f"{sorted(req - runtime)}, only in pyproject.toml {sorted(runtime - req)}")


def test_training_and_test_packages_stay_in_extras():
    runtime = {_key(ln)[0] for ln in _requirements_txt()}
    extras = {_key(d)[0] for group in _pyproject()["optional-dependencies"].values() for d in group}
    assert runtime & extras == set()
    assert {"peft", "pytest", "playwright"} <= extras


def test_transformers_floor_matches_the_runtime_check():
    from dream_engine_core.compat import TRANSFORMERS_MIN, TRANSFORMERS_REQUIREMENT

    spec = {_key(ln)[0]: Requirement(ln).specifier for ln in _requirements_txt()}["transformers"]
    floor = ".".join(map(str, TRANSFORMERS_MIN))
    assert str(spec) == str(Requirement(TRANSFORMERS_REQUIREMENT).specifier) == f">={floor}"
    assert not any(s.operator in ("<", "<=") for s in spec), "no upper bound without a known-broken version"
