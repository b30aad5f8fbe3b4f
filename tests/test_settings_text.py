"""docs/OPERATIONS.md's settings table is the one the declarations make."""

from __future__ import annotations

from pathlib import Path

from trio_gateway.runtime.settings import SETTINGS
from trio_gateway.runtime.settings_text import markdown_table

OPERATIONS = Path(__file__).parent.parent / "docs" / "OPERATIONS.md"
BEGIN = (
    "<!-- settings table: generated from trio_gateway/runtime/config.py by "
    "`python -m trio_gateway.runtime.settings_text --markdown`; edit the declarations -->\n"
)
END = "<!-- end of settings table -->\n"
REGENERATE = "python -m trio_gateway.runtime.settings_text --markdown"


def test_operations_settings_table_is_generated() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    documented = text.partition(BEGIN)[2].partition(END)[0]
    assert documented == markdown_table(), (
        f"docs/OPERATIONS.md's settings table is out of date: replace the lines between "
        f"its markers with the output of `.venv/bin/{REGENERATE}`"
    )


def test_table_has_a_row_per_setting_and_the_config_file() -> None:
    rows = markdown_table().splitlines()[2:]
    names = [row.split(" | ")[0].removeprefix("| ").strip("`") for row in rows]
    assert names == [*(setting.name for setting in SETTINGS), "config"]
    api_keys = rows[[setting.name for setting in SETTINGS].index("api_keys")]
    assert "`--api-key` / `TRIO_GATEWAY_API_KEYS` (or `TRIO_GATEWAY_API_KEY`)" in api_keys
