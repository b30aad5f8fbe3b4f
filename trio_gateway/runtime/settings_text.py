"""The settings as text for people: `trio-gateway genconfig`'s file and the docs' table.

Owns how the declarations (config.py, through settings.SETTINGS) are rendered: a commented
TOML file that parses and validates as printed, and the markdown table in docs/OPERATIONS.md,
which tests/test_settings_text.py keeps equal to `markdown_table()`. Must not parse or
validate anything itself.

    python -m trio_gateway.runtime.settings_text --markdown    # the table, to paste
"""

from __future__ import annotations

import argparse
import json
import textwrap

from .settings import CONFIG_FILE, CONFIG_FILE_ENV, SETTINGS, Setting

# Characters per comment line of the generated file, "# " included.
COMMENT_WIDTH = 96


def toml_value(value: object) -> str:
    """`value` as a TOML literal: strings quoted, lists bracketed, booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    # JSON's strings and numbers are TOML's (its \u escapes included).
    return json.dumps(value)


def default_text(setting: Setting) -> str:
    """The default as `--help` shows it: `8000`, `off`, `/api/ws`, or what unset means."""
    default = setting.default
    if setting.unset:
        return f"none ({setting.doc.unset})" if setting.doc.unset else "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ", ".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def genconfig() -> str:
    """A complete TOML file of every setting at its default, each with its help as a comment.

    Settings without a default value are shown commented out with an example, so the file
    parses (and passes `check-config`) exactly as printed.
    """
    lines = [
        "# trio-gateway configuration: every setting, at its default.",
        "# Each can also be given as a flag or an environment variable, which win:",
        "# flag > environment > this file > default. Check edits with",
        "# `trio-gateway check-config FILE`; use it with `trio-gateway serve --config FILE`.",
    ]
    for setting in SETTINGS:
        lines += [
            "",
            *textwrap.wrap(
                setting.help, COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# "
            ),
        ]
        names = f"# flag {setting.flag}, env {setting.env}"
        if setting.doc.env_alias:
            names += f" (or {setting.doc.env_alias})"
        lines.append(names)
        if setting.unset:
            lines.append(f"# unset by default: {setting.doc.unset or 'none'}")
            example = setting.doc.example
            assert example is not None, f"{setting.name} needs a Doc.example"
            lines.append(f"# {setting.name} = {toml_value(example)}")
        else:
            lines.append(f"{setting.name} = {toml_value(setting.default)}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_default(setting: Setting) -> str:
    if setting.unset or isinstance(setting.default, bool):
        return default_text(setting)
    return f"`{default_text(setting)}`"


def _markdown_row(setting: Setting) -> str:
    names = f"`{setting.flag}` / `{setting.env}`"
    if setting.doc.env_alias:
        names += f" (or `{setting.doc.env_alias}`)"
    unit = setting.doc.unit or ("switch" if setting.switch else "")
    if not unit and setting.metavar == "SECONDS":
        unit = "seconds"
    meaning = setting.doc.help + (f"; {setting.doc.note}" if setting.doc.note else "")
    cells = (f"`{setting.name}`", names, _markdown_default(setting), unit, meaning)
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def markdown_table() -> str:
    """docs/OPERATIONS.md's settings table, one row per setting, then the config file's."""
    rows = [
        "| setting | flag / env | default | unit | meaning |",
        "| --- | --- | --- | --- | --- |",
        *(_markdown_row(setting) for setting in SETTINGS),
        f"| `{CONFIG_FILE}` | `--config` / `{CONFIG_FILE_ENV}` | none | path | the TOML file "
        "(not a TOML key itself) |",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--markdown", action="store_true", required=True, help="print the table")
    parser.parse_args()
    print(markdown_table(), end="")


if __name__ == "__main__":
    main()
