"""What the import contracts cannot see: the modules a real import loads.

The layers and the "no Textual in the engine" rules are import-linter contracts
(``[tool.importlinter]`` in pyproject.toml, run by ``make test``). import-linter reads
opsdash's own import statements; it does not follow the imports third-party packages
make, nor see an import done by name at run time. These probes import the libraries in
a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys

LIBRARY_MODULES = (
    "opsdash.engine",
    "opsdash.engine.runtime",
    "opsdash.engine.queries",
    "opsdash.engine.companies",
    "opsdash.privacy",
    "opsdash.readapi",
    "opsdash.readapi.app",
    "opsdash.shared_reads",
)
HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "fastapi", "starlette", "textual")


def top_level_modules_after(statement: str) -> set[str]:
    probe = (
        f"import sys\n{statement}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.strip().split(","))


def test_the_libraries_load_no_textual() -> None:
    loaded = top_level_modules_after(f"import {', '.join(LIBRARY_MODULES)}")
    assert "textual" not in loaded


def test_the_probe_does_see_textual_when_the_console_is_imported() -> None:
    """Guards the test above: the same probe reports Textual once the console is imported."""
    assert "textual" in top_level_modules_after("import opsdash.app")


def test_the_privacy_module_loads_only_the_standard_library() -> None:
    """One rule for the view, used by the engine, the API and the console: it must stay light."""
    assert top_level_modules_after("import opsdash.privacy") & set(HEAVY) == set()


def test_the_probe_does_see_sqlalchemy() -> None:
    assert "sqlalchemy" in top_level_modules_after("import opsdash.engine.models")
