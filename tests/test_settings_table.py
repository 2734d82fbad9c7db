"""Every setting carries its meaning, and README's settings table lists exactly the settings."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from opsdash.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ENV_NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def environment_name(field_name: str, field: FieldInfo) -> str:
    """The name an operator sets: the standard unprefixed one where there is one."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str) and choice.isupper()]
        standard = [name for name in names if not name.startswith("OPSDASH_")]
        return (standard or names)[0]
    return f"OPSDASH_{field_name.upper()}"


def readme_settings_table() -> list[str]:
    """The names in the first column of the table under README's "### Settings"."""
    text = README.read_text()
    lines = text[text.index("### Settings") :].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    names: list[str] = []
    for line in lines[start + 2 :]:  # past the header and its rule
        if not line.startswith("|"):
            break
        names += ENV_NAME.findall(line.split("|")[1])
    return names


def test_every_setting_has_a_docstring() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []


def test_the_readme_lists_exactly_the_settings() -> None:
    settings = [environment_name(name, field) for name, field in Settings.model_fields.items()]
    listed = readme_settings_table()
    assert sorted(set(settings) - set(listed)) == [], "settings missing from README's table"
    assert sorted(set(listed) - set(settings)) == [], "README lists settings that do not exist"
    assert len(listed) == len(set(listed)), "a setting is listed twice"


def test_the_names_follow_the_fields() -> None:
    """Guards the comparison above: the names it derives are the ones pydantic reads."""
    fields = Settings.model_fields
    assert environment_name("workers", fields["workers"]) == "OPSDASH_WORKERS"
    assert environment_name("database_url", fields["database_url"]) == "DATABASE_URL"
    assert environment_name("config_file", fields["config_file"]) == "OPSDASH_CONFIG"
