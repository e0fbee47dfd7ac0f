"""``kitsune_backend.compile``: options checked and the config bound at the call."""

import pytest
import torch

import kitsune_backend
from kitsune_backend.errors import KitsuneConfigError
from tests.helpers import assert_close


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"fusoin": False}, r"unknown kitsune compile option\(s\) \['fusoin'\]; valid options are:.*fusion"),
    ({"num_streams": "4"}, "'num_streams' must be an int, got '4'"),
    ({"fusion": "false"}, "'fusion' must be a bool"),
    ({"mode": "fast"}, "unknown kitsune mode 'fast'"),
    ({"num_streams": 0}, "at least 1"),
])
def test_bad_options_are_value_errors_at_the_call(kwargs, message):
    """The error comes from ``compile`` itself, before any call of the model."""
    with pytest.raises(ValueError, match=message) as caught:
        kitsune_backend.compile(_model(), **kwargs)
    assert isinstance(caught.value, KitsuneConfigError)


def test_config_is_bound_when_compile_is_called():
    """A patch block around ``compile`` holds for the first call made after the block."""
    model = _model()
    with kitsune_backend.config.patch(fusion=False, num_streams=2):
        compiled = kitsune_backend.compile(model, mode="max-autotune-no-cudagraphs")
    x = torch.randn(3, 8)
    assert_close(compiled(x), model(x))
    session = kitsune_backend.last_compile()
    assert (session.config.fusion, session.config.num_streams) == (False, 2)
    assert session.config.autotune and not session.config.cuda_graphs


def test_mode_and_options_combine_and_compile_is_a_decorator():
    @kitsune_backend.compile(mode="max-autotune-no-cudagraphs", num_streams=3)
    def f(x):
        return torch.relu(x) * 2

    x = torch.randn(5)
    assert_close(f(x), torch.relu(x) * 2)
    assert kitsune_backend.last_compile().config.num_streams == 3


def test_plain_torch_compile_reports_bad_options_at_the_first_call():
    """What a ``torch.compile(..., options=...)`` user sees: Dynamo's wrapper whose cause
    is kitsune's ValueError (the docs' troubleshooting page shows it)."""
    compiled = torch.compile(_model(), backend="kitsune", options={"fusoin": False})
    with pytest.raises(Exception) as caught:
        compiled(torch.randn(2, 8))
    cause = getattr(caught.value, "inner_exception", None)  # BackendCompilerFailed's
    assert isinstance(cause, KitsuneConfigError) and "fusoin" in str(cause)
