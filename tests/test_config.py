"""Config: defaults, environment, patches, modes and options, and their error messages."""

import pytest

from kitsune_backend import config
from kitsune_backend.config import Config, resolve
from kitsune_backend.errors import KitsuneConfigError


def test_defaults_turn_every_feature_on():
    cfg = resolve()
    assert cfg == Config()
    assert cfg.fusion and cfg.streams and cfg.cuda_graphs and cfg.memory_pool
    assert not cfg.strict and cfg.num_streams >= 2


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown kitsune compile option.*'fusoin'.*valid options are:.*fusion"):
        resolve(options={"fusoin": False})


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="unknown kitsune mode 'fast'.*'reduce-overhead'"):
        resolve(mode="fast")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_streams": "four"}, "'num_streams' must be an int"),
        ({"fusion": 1}, "'fusion' must be a bool"),
        ({"num_streams": 0}, "at least 1"),
        ({"streams": False, "num_streams": 4}, "conflicting"),
        ({"capture_shapes": 0}, "'capture_shapes' must be at least 1"),
        ({"capture_shapes": "8"}, "'capture_shapes' must be an int"),
        ({"batch_buckets": "pow3"}, "'batch_buckets' must be one of pow2, off"),
        ({"batch_buckets": False}, "'batch_buckets' must be a str"),
    ],
)
def test_bad_values_are_clear_errors(options, message):
    with pytest.raises(KitsuneConfigError, match=message):
        resolve(options=options)


def test_mode_and_contradicting_option_conflict():
    with pytest.raises(KitsuneConfigError, match="max-autotune-no-cudagraphs"):
        resolve(mode="max-autotune-no-cudagraphs", options={"cuda_graphs": True})


def test_modes_set_their_flags():
    assert resolve(mode="max-autotune").autotune
    assert not resolve(mode="max-autotune-no-cudagraphs").cuda_graphs
    assert resolve(mode="reduce-overhead").cuda_graphs


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("KITSUNE_FUSION", "0")
    monkeypatch.setenv("KITSUNE_NUM_STREAMS", "7")
    monkeypatch.setenv("KITSUNE_DEBUG_DIR", "/tmp/somewhere")
    cfg = resolve()
    assert cfg.fusion is False and cfg.num_streams == 7 and cfg.debug_dir == "/tmp/somewhere"


def test_capture_shape_options_from_the_environment(monkeypatch):
    assert (resolve().capture_shapes, resolve().batch_buckets) == (8, "pow2")
    monkeypatch.setenv("KITSUNE_CAPTURE_SHAPES", "3")
    monkeypatch.setenv("KITSUNE_BATCH_BUCKETS", "off")
    cfg = resolve()
    assert cfg.capture_shapes == 3 and cfg.batch_buckets == "off"
    monkeypatch.setenv("KITSUNE_BATCH_BUCKETS", "pow4")
    with pytest.raises(KitsuneConfigError, match="'batch_buckets' must be one of"):
        resolve()


def test_unknown_environment_variable_is_an_error(monkeypatch):
    monkeypatch.setenv("KITSUNE_FUSON", "0")
    with pytest.raises(KitsuneConfigError, match="KITSUNE_FUSON.*KITSUNE_FUSION"):
        resolve()


def test_bad_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv("KITSUNE_STREAMS", "maybe")
    with pytest.raises(KitsuneConfigError, match="'streams' must be a bool"):
        resolve()


def test_patch_is_scoped_and_nests(monkeypatch):
    monkeypatch.setenv("KITSUNE_NUM_STREAMS", "3")
    with config.patch(num_streams=2, fusion=False):
        with config.patch(num_streams=5):
            inner = resolve()
        outer = resolve()
    after = resolve()
    assert (inner.num_streams, inner.fusion) == (5, False)
    assert (outer.num_streams, outer.fusion) == (2, False)
    assert (after.num_streams, after.fusion) == (3, True)


def test_options_beat_patch_and_environment(monkeypatch):
    monkeypatch.setenv("KITSUNE_CUDA_GRAPHS", "0")
    with config.patch(cuda_graphs=False):
        assert resolve(options={"cuda_graphs": True}).cuda_graphs


def test_patch_rejects_unknown_names_immediately():
    with pytest.raises(KitsuneConfigError, match="unknown kitsune patch option"):
        with config.patch(colour="red"):
            pass


def test_replace_validates():
    cfg = Config().replace(num_streams=8)
    assert cfg.num_streams == 8
    with pytest.raises(KitsuneConfigError):
        Config().replace(num_streams=-1)


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().fusion = False  # type: ignore[misc]


def test_cache_dir_default_and_override(tmp_path):
    assert Config().cache_dir.endswith("kitsune_backend")
    assert Config(kernel_cache_dir=str(tmp_path)).cache_dir == str(tmp_path)


@pytest.mark.parametrize("changes", [{"num_streams": "4"}, {"fusion": "false"},
                                     {"cuda_graphs": 0}, {"num_streams": 4.0}])
def test_types_are_strict_in_code(changes):
    """Strings are parsed from the environment only: in code, "4" is not 4."""
    name = next(iter(changes))
    with pytest.raises(KitsuneConfigError, match=f"'{name}' must be"):
        resolve(options=changes)
    with pytest.raises(KitsuneConfigError, match=f"'{name}' must be"):
        with config.patch(**changes):
            pass
    with pytest.raises(KitsuneConfigError, match=f"'{name}' must be"):
        Config().replace(**changes)


def test_options_may_name_the_mode():
    """torch.compile refuses mode beside options; options={"mode": ...} combines them."""
    cfg = resolve(options={"mode": "max-autotune-no-cudagraphs", "num_streams": 3})
    assert cfg.autotune and not cfg.cuda_graphs and cfg.num_streams == 3
    with pytest.raises(KitsuneConfigError, match="mode given twice"):
        resolve(mode="reduce-overhead", options={"mode": "max-autotune"})
    with pytest.raises(KitsuneConfigError, match="unknown kitsune mode \\['fast'\\]"):
        resolve(options={"mode": ["fast"]})


def test_a_misspelt_environment_variable_fails_the_import():
    import os
    import subprocess
    import sys

    env = dict(os.environ, KITSUNE_FUSOIN="0")
    run = subprocess.run([sys.executable, "-c", "import kitsune_backend"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "KitsuneConfigError: unknown environment variable KITSUNE_FUSOIN" in run.stderr
    assert "KITSUNE_FUSION" in run.stderr


def test_float_option_takes_floats_and_ints_in_code_and_parses_the_environment(monkeypatch):
    assert Config().stream_memory_budget == 0.10
    cfg = resolve(options={"stream_memory_budget": 1})
    assert cfg.stream_memory_budget == 1.0 and type(cfg.stream_memory_budget) is float
    assert Config().replace(stream_memory_budget=0.25).stream_memory_budget == 0.25
    assert resolve(options={"stream_memory_budget": float("inf")}).stream_memory_budget > 1e300
    for text, value in (("0.25", 0.25), (" 2 ", 2.0), ("1e-1", 0.1), ("inf", float("inf"))):
        monkeypatch.setenv("KITSUNE_STREAM_MEMORY_BUDGET", text)
        assert resolve().stream_memory_budget == value


@pytest.mark.parametrize("value", ["0.1", True, None, [0.1]])
def test_float_option_is_strict_in_code(value):
    with pytest.raises(KitsuneConfigError, match="'stream_memory_budget' must be a float"):
        resolve(options={"stream_memory_budget": value})
    with pytest.raises(KitsuneConfigError, match="'stream_memory_budget' must be a float"):
        with config.patch(stream_memory_budget=value):
            pass


@pytest.mark.parametrize("text", ["ten percent", "0.1.2", "", "true"])
def test_float_option_rejects_bad_environment_text(monkeypatch, text):
    monkeypatch.setenv("KITSUNE_STREAM_MEMORY_BUDGET", text)
    with pytest.raises(KitsuneConfigError, match="'stream_memory_budget' must be a float"):
        resolve()


@pytest.mark.parametrize("value", [-0.01, -1, float("nan")])
def test_float_option_range_is_checked(monkeypatch, value):
    with pytest.raises(KitsuneConfigError, match="'stream_memory_budget' must be a fraction >= 0"):
        resolve(options={"stream_memory_budget": value})
    monkeypatch.setenv("KITSUNE_STREAM_MEMORY_BUDGET", str(value))
    with pytest.raises(KitsuneConfigError, match="must be a fraction >= 0"):
        resolve()
