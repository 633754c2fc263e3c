"""benchmarks/floor.py at its --quick size: the floor rows are measured and land in the JSON and Markdown."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_benchmark_script


COMPONENTS = ("read_readinto", "read_memmap_copy", "elementwise_uint16", "elementwise_float32", "reduction",
              "blend", "compress", "decompress")


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    pytest.importorskip("psutil")
    pytest.importorskip("numcodecs")
    out = tmp_path_factory.mktemp("bench-floor")
    run_benchmark_script("floor", ["--quick", "--size-mb", "16", "--workdir", str(out / "work"), "--results", str(out)])
    assert (out / "floor-quick.md").is_file()
    return json.loads((out / "floor-quick.json").read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_floor_component_is_positive_and_finite(record):
    assert record["benchmark"] == "floor" and record["repeats"] == 1
    for key in COMPONENTS:
        assert _positive(record["floor"][key]["cpu_s_per_gb"]), key
    assert record["floor"]["compress"]["ratio"] > 1  # realistic synthetic data compresses
    assert record["floor"]["compress"]["codec"].startswith("blosc-zstd")


def test_floor_sums_add_up(record):
    sums, floor = record["floor_sums"], record["floor"]
    assert _positive(sums["correction"]) and sums["correction_and_fusion"] > sums["correction"]
    read = min(floor["read_readinto"]["cpu_s_per_gb"], floor["read_memmap_copy"]["cpu_s_per_gb"])
    expected = read + sum(floor[k]["cpu_s_per_gb"] for k in ("elementwise_uint16", "reduction", "compress"))
    assert sums["correction"] == pytest.approx(expected)


def test_quick_skips_the_stages_and_the_table_lists_the_rows(record):
    assert record["stages"] == {}
    components = [r["component"] for r in record["rows"]]
    assert len(components) == len(COMPONENTS) + 2
    assert all(_positive(r["cpu_s_per_gb"]) for r in record["rows"])
