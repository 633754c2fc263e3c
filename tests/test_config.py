"""ProcessingConfig: validation with named keys, lossless TOML/JSON round trips, flags, template."""

import tomllib

import pytest

from isoview_dask.config import ConfigError, ProcessingConfig, all_flags, template


def _custom():
    return ProcessingConfig(
        input={"timepoints": [0, 2, 4], "cameras": [0, 1], "allow_truncated": True},
        correction={"segment_threshold": 0.3, "segment_sigma_axial": 0.75, "camera": {1: {"flip_h": True, "rotation": 90,
                                                                                        "crop": [2, 60, 4, 80]}}},
        output={"codec": "blosc-lz4hc", "level": 9, "shuffle": "bitshuffle", "shards": [16, 512, 512],
                "pyramid_levels": 2})


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_round_trip_is_lossless(tmp_path, suffix):
    cfg = _custom()
    path = cfg.save(tmp_path / f"run{suffix}")
    again = ProcessingConfig.load(path)
    assert again == cfg
    assert again.camera_options(1).crop == (2, 60, 4, 80) and again.camera_options(0).rotation == 0
    assert ProcessingConfig.load(ProcessingConfig().save(tmp_path / f"d{suffix}")) == ProcessingConfig()


@pytest.mark.parametrize("data, message", [
    ({"correction": {"segment_treshold": 0.3}}, "correction: unknown key 'segment_treshold'"),
    ({"fusionn": {}}, "unknown section 'fusionn'"),
    ({"correction": {"segment_threshold": 1.5}}, "correction.segment_threshold: 1.5 is above the maximum 1.0"),
    ({"correction": {"segment_threshold": "high"}}, "correction.segment_threshold: expected a number"),
    ({"correction": {"dead_pixel_kernel": 2.5}}, "correction.dead_pixel_kernel: expected an integer"),
    ({"correction": {"precise_gauss": "maybe"}}, "correction.precise_gauss: expected true or false"),
    ({"correction": {"camera": {"1": {"rotation": 45}}}}, "correction.camera.rotation: 45 is not one of"),
    ({"correction": {"camera": {"1": {"spin": 1}}}}, "correction.camera.1: unknown key 'spin'"),
    ({"input": {"cameras": [0, 1]}, "correction": {"camera": {"3": {"flip_h": True}}}},
     "correction.camera.3: camera 3 is not among input.cameras"),
    ({"output": {"format": "hdf5"}}, "output.format: 'hdf5' is not one of"),
    ({"output": {"codec": "snappy"}}, "output.codec: unknown codec 'snappy'"),
    ({"output": {"codec": "gzip", "level": 12}}, "level 12 is outside 0..9"),
    ({"output": {"chunks": [8, 256]}}, "output.chunks: expected 3 values"),
    ({"input": {"timepoints": [-1]}}, "input.timepoints: -1 is below the minimum 0"),
])
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        ProcessingConfig.from_dict(data)
    assert message in str(info.value)


def test_flags_override_and_cli_strings():
    cfg = ProcessingConfig.from_flags(correction_segment_threshold="0.25", output_shards="8,64,64",
                                      input_timepoints="1,2", output_overwrite="yes", correction_segment=None)
    assert cfg.correction.segment_threshold == 0.25 and cfg.output.shards == (8, 64, 64)
    assert cfg.input.timepoints == (1, 2) and cfg.output.overwrite is True and cfg.correction.segment is True
    assert cfg.replace(output_codec="gzip").output.codec == "gzip"
    with pytest.raises(ConfigError, match="unknown option 'segment_threshold'"):
        ProcessingConfig.from_flags(segment_threshold=0.2)


def test_template_lists_every_option_and_parses(tmp_path):
    text = template()
    for flag, f, _ in all_flags():
        assert f.name in text, flag
    parsed = ProcessingConfig.from_dict(tomllib.loads(text))
    assert parsed == ProcessingConfig()


def test_load_errors(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        ProcessingConfig.load(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[correction\nsegment = 1")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        ProcessingConfig.load(bad)
    bad.write_text("[correction]\nsegmnt = true\n")
    with pytest.raises(ConfigError, match="bad.toml: correction: unknown key 'segmnt'"):
        ProcessingConfig.load(bad)


def test_readme_lists_every_matlab_option():
    from pathlib import Path

    from isoview_dask.config import matlab_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert matlab_table() in readme, "README's MATLAB table is stale: paste matlab_table() output"
