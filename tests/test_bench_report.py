"""scripts/bench.py's pure parts: the flags a gateway tree is given, scenario S's sizes, its
table and the targets it feeds (no server is started, except `serve --help` of this tree)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # bench.py imports its sibling bench_loadgen as scripts/ being on the path does.
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def l_run(cost: float, clients: int, lost: int = 0) -> dict[str, Any]:
    return {
        "server_us_per_delivery": cost,
        "clients": clients,
        "rate": 50_000 / clients,
        "events": 100,
        "p50_ms": 2.0,
        "p99_ms": 9.5,
        "lost": lost,
        "duplicates": 0,
        "complete": True,
    }


def test_known_options_leave_out_what_an_older_tree_lacks(bench: ModuleType) -> None:
    options = [("--queue-depth", "21000"), ("--max-connections", "0")]
    kept, missing = bench.known_options(options, frozenset({"--queue-depth", "--port"}))
    assert kept == ["--queue-depth", "21000"]
    assert missing == ["--max-connections"]


def test_this_tree_gets_every_cap_lifted(bench: ModuleType) -> None:
    args = argparse.Namespace(events=20_000, gateway_src=ROOT)
    command = bench.server_command("gateway", "A", args, source=ROOT)
    for flag in ("--max-connections-per-ip", "--max-handshakes", "--max-connections"):
        assert command[command.index(flag) + 1] == "0"
    assert command[command.index("--queue-depth") + 1] == "21000"


def test_sizes_are_capped_by_the_descriptor_limit(bench: ModuleType) -> None:
    sizes, notes = bench.scaling_sizes([1000, 5000, 20_000], 20_000)
    assert sizes == [1000, 5000, 19_800]
    assert notes == [
        "S: 20,000 subscribers asked, 19,800 run: the hard RLIMIT_NOFILE is 20,000"
        " (ulimit -Hn; raising it needs CAP_SYS_RESOURCE)"
    ]
    assert bench.scaling_sizes([1000, 5000, 20_000], 1_048_576) == ([1000, 5000, 20_000], [])


def test_scaled_keeps_deliveries_per_second_and_the_events(bench: ModuleType) -> None:
    args = argparse.Namespace(
        clients=1000,
        rate=50.0,
        latency_seconds=10.0,
        scale_deliveries=50_000.0,
        scale_events=100,
        scale_ping_interval=600.0,
        gateway_src=ROOT,
    )
    at_1k, at_20k = bench.scaled(args, 1000), bench.scaled(args, 20_000)
    assert (at_1k.clients, at_1k.rate, at_1k.latency_seconds) == (1000, 50.0, 10.0)
    assert (at_20k.clients, at_20k.rate, at_20k.latency_seconds) == (20_000, 2.5, 40.0)
    assert args.clients == 1000
    command = bench.server_command("gateway", "L", at_20k, source=ROOT)
    assert command[command.index("--ping-interval") + 1] == "600.0"
    assert "--ping-interval" not in bench.server_command("gateway", "L", args, source=ROOT)


def test_scaling_table_shows_each_size_over_the_cheapest(bench: ModuleType) -> None:
    variants = {
        "L 1000": l_run(4.0, 1000),
        "L 5000": l_run(4.2, 5000),
        "L 19800": l_run(4.6, 19_800),
        "C 19800": {"rss_per_conn_kib": 10.5, "server_cpu_pct": 6.1, "wall_s": 20.0, "lost": 0},
    }
    lines = bench.scaling_table(variants).splitlines()
    assert lines[0].split() == ["S", "metric", "1,000", "subs", "5,000", "subs", "19,800", "subs"]
    over = next(line for line in lines if "over the cheapest" in line)
    assert over.split()[-3:] == ["1.000", "1.050", "1.150"]
    assert "S idle, held 20.000 s" in lines[lines.index("") + 1]
    assert next(line for line in lines if line.startswith("RSS KiB/conn")).split()[-1] == "10.500"
    assert bench.scaling_spread(variants) == pytest.approx(1.15)


def test_scaling_table_puts_the_floor_under_each_size(bench: ModuleType) -> None:
    variants = {"L 1000": l_run(4.0, 1000), "L 5000": l_run(6.0, 5000)}
    floor = {"L 1000": l_run(2.0, 1000), "L 5000": l_run(2.5, 5000)}
    lines = bench.scaling_table(variants, floor).splitlines()
    row = next(line for line in lines if line.startswith("gw us/delivery over floor's"))
    assert row.split()[-2:] == ["2.000", "2.400"]
    assert next(line for line in lines if line.startswith("floor lost")).split()[-2:] == ["0", "0"]
    found = checks(bench, {"gateway": {"S": variants}, "write_floor": {"S": floor}})
    assert found["S server us/delivery within 20% across sizes (dearest/cheapest)"] == (
        False,
        "1.500",
    )
    assert found["S gw/floor us/delivery within 20% across sizes (dearest/cheapest)"] == (
        True,
        "1.200",
    )


def checks(bench: ModuleType, results: dict[str, Any]) -> dict[str, tuple[bool | None, str]]:
    return {label: (ok, value) for label, ok, value in bench.targets_met(results)}


def test_targets_cost_spread_parent_and_every_size_lost(bench: ModuleType) -> None:
    gateway = {
        "S": {"L 1000": l_run(4.0, 1000), "L 19800": l_run(5.0, 19_800, lost=3)},
        "A": {"deliveries_per_s": 4_000_000},
        "L": {"server_us_per_delivery": 3.9},
    }
    parent = {"A": {"deliveries_per_s": 4_200_000}, "L": {"server_us_per_delivery": 3.4}}
    found = checks(bench, {"gateway": gateway, "parent": parent})
    assert found["S server us/delivery within 20% across sizes (dearest/cheapest)"] == (
        False,
        "1.250",
    )
    assert found["A deliveries/s gateway/parent >= 0.9 (feature paths unused)"] == (True, "0.952")
    assert found["L server us/delivery gateway/parent <= 1.1 (feature paths unused)"] == (
        False,
        "1.147",
    )
    assert found["S L 1000 gateway lost = 0, duplicates = 0"] == (True, "0")
    assert found["S L 19800 gateway lost = 0, duplicates = 0"] == (False, "3")


def test_targets_not_measured_without_s_or_parent(bench: ModuleType) -> None:
    found = checks(bench, {"gateway": {"S": {"L 1000": l_run(4.0, 1000)}}})
    assert found["S server us/delivery within 20% across sizes (dearest/cheapest)"] == (None, "-")
    assert found["A deliveries/s gateway/parent >= 0.9 (feature paths unused)"] == (None, "-")
