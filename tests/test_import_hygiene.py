"""The engine and the read API are libraries: importing them must not pull in Textual."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

LIBRARY_MODULES = [
    "opsdash.engine",
    "opsdash.engine.runtime",
    "opsdash.engine.queries",
    "opsdash.engine.companies",
    "opsdash.privacy",
]
if importlib.util.find_spec("opsdash.readapi") is not None:
    LIBRARY_MODULES += ["opsdash.readapi", "opsdash.readapi.app"]


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_module_imports_without_textual(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imported Textual: {done.stdout.strip()}"


def test_the_probe_does_see_textual_when_it_is_imported() -> None:
    """Guards the test above: the same probe reports Textual once the console is imported."""
    probe = "import sys, opsdash.app\nprint('textual' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "True", done.stderr


HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "fastapi", "starlette", "textual")


def heavy_modules_after(statement: str) -> list[str]:
    probe = (
        f"import sys\n{statement}\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.strip().split(",") if name]


def test_the_privacy_module_imports_only_the_standard_library() -> None:
    """One rule for the view, used by the engine, the API and the console: it must stay light."""
    assert heavy_modules_after("import opsdash.privacy") == []


def test_the_heavy_probe_does_see_sqlalchemy() -> None:
    assert "sqlalchemy" in heavy_modules_after("import opsdash.engine.models")
