"""One error family: every exception the pack raises (``nodes/``, ``dream_engine_core/``) is a
``DreamEngineError`` (ComfyUI shows it as ``dream_engine.<Name>``), every error class of the
pack is defined in ``dream_engine_core/errors.py``, and the builtins callers catch still
catch them. The raises are read from the syntax tree of every module of the pack."""
from __future__ import annotations

import ast
import os

import pytest

from conftest import ROOT, pack_module

PACK_DIRS = ("dream_engine_core", "nodes")


def _modules():
    for d in PACK_DIRS:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".py"):
                yield f"{d}.{f[:-3]}".replace(".__init__", ""), os.path.join(ROOT, d, f)


def _raised_names(path: str) -> list[tuple[int, str]]:
    """(line, name) of every ``raise NAME`` / ``raise NAME(...)``; bare re-raises are skipped."""
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            out.append((node.lineno, ast.unparse(exc)))
    return out


def test_every_raise_of_the_pack_is_a_dream_engine_error(pack):
    from dream_engine_core.errors import DreamEngineError as CoreBase

    bases = (CoreBase, pack_module("dream_engine_core.errors").DreamEngineError)
    wrong = []
    for name, path in _modules():
        module = pack_module(name)
        for line, raised in _raised_names(path):
            obj = module
            for part in raised.split("."):
                obj = getattr(obj, part, None)
            if raised == "web.HTTPNotFound":  # the thumbnail route's answer to an unknown name (aiohttp's 404)
                continue
            if not (isinstance(obj, type) and issubclass(obj, bases)):
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} raises {raised}")
    assert not wrong, "raises outside the pack's error family:\n" + "\n".join(wrong)


def test_the_family_lives_in_errors_py():
    defined = []
    for _, path in _modules():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ClassDef) and any("Error" in ast.unparse(b) or "Mismatch" in ast.unparse(b)
                                                      or "Exception" in ast.unparse(b) for b in node.bases):
                defined.append((os.path.relpath(path, ROOT), node.name))
    assert defined and {p for p, _ in defined} == {os.path.join("dream_engine_core", "errors.py")}, defined


@pytest.mark.parametrize("name, builtin", [("PromptError", ValueError), ("ImageInputError", ValueError),
                                           ("OptionError", ValueError), ("WeightsError", ValueError),
                                           ("LMMFolderError", FileNotFoundError), ("ModelNameError", FileNotFoundError),
                                           ("FingerprintError", ValueError), ("AdapterMismatch", ValueError),
                                           ("AdapterBaseMismatch", ValueError), ("WiringError", ValueError),
                                           ("DependencyError", RuntimeError)])
def test_each_error_is_shown_as_dream_engine_and_caught_as_before(name, builtin):
    from dream_engine_core import errors

    cls = getattr(errors, name)
    assert issubclass(cls, errors.DreamEngineError) and issubclass(cls, builtin)
    assert f"{cls.__module__}.{cls.__qualname__}" == f"dream_engine.{name}"
