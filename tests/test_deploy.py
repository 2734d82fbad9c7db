"""The deploy kit: the systemd units pass ``systemd-analyze verify`` and run real commands."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opsdash.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = ("opsdash-api.service", "opsdash-worker@.service")
INSTALLED_OPSDASH = "/opt/opsdash/venv/bin/opsdash"
SANDBOXING = (
    "DynamicUser=yes",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "CapabilityBoundingSet=",
    "SystemCallFilter=@system-service",
)

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package `systemd`; .ci/run installs it)",
)


def unit_text(name: str) -> str:
    return (DEPLOY / name).read_text()


def exec_start(text: str) -> list[str]:
    [line] = re.findall(r"^ExecStart=(.+)$", text, flags=re.MULTILINE)
    return shlex.split(line)


def localised(folder: Path, name: str, text: str) -> Path:
    """The unit as it would be installed here: this venv's opsdash, a local env file."""
    env_file = folder / "opsdash.env"
    env_file.write_text((DEPLOY / "opsdash.env.example").read_text())
    opsdash = Path(sys.executable).with_name("opsdash")
    target = folder / name.replace("@.", "@1.")  # verify an instance of the template
    target.write_text(
        text.replace(INSTALLED_OPSDASH, str(opsdash)).replace(
            "/etc/opsdash/opsdash.env", str(env_file)
        )
    )
    return target


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=units[0].parent,
    )


@needs_systemd
def test_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    units = [localised(tmp_path, name, unit_text(name)) for name in UNITS]
    result = verify(*units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd
def test_verify_catches_a_misspelt_option(tmp_path: Path) -> None:
    # The check above can fail: a typo in a sandboxing option is reported.
    broken = unit_text("opsdash-api.service").replace("ProtectSystem=", "ProtectSytem=")
    result = verify(localised(tmp_path, "opsdash-api.service", broken))
    assert "Unknown key 'ProtectSytem'" in result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_run_real_commands_with_restart_and_sandboxing(name: str) -> None:
    text = unit_text(name)
    command = exec_start(text)
    assert command[0] == INSTALLED_OPSDASH
    build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown option
    assert "EnvironmentFile=/etc/opsdash/opsdash.env" in text
    assert "Restart=on-failure" in text
    assert "RestartPreventExitStatus=2" in text  # a refused configuration never loops
    for option in SANDBOXING:
        assert re.search(rf"^{re.escape(option)}", text, flags=re.MULTILINE), option


def test_the_example_environment_names_the_whole_production_set() -> None:
    from opsdash.modes import PRODUCTION_SET

    example = (DEPLOY / "opsdash.env.example").read_text()
    for requirement in PRODUCTION_SET:
        assert re.search(rf"^{requirement.name}=", example, flags=re.MULTILINE), requirement.name
