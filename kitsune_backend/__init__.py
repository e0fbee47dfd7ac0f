"""kitsune_backend: a ``torch.compile`` backend with fusion, multi-stream schedules and
whole-graph CUDA graphs.

Use it with ``torch.compile(model, backend="kitsune")``; no import is needed once the package
is installed (Dynamo finds it through the ``torch_dynamo_backends`` entry point).
``kitsune_backend.compile(model, mode=..., **options)`` does the same with the options
checked at that call.
"""

from . import config, log, torch_compat
from .backend import compile, kitsune
from .config import Config
from .errors import (
    KitsuneConfigError,
    KitsuneError,
    KitsuneInvariantError,
    KitsunePluginError,
    KitsuneUnsupportedError,
)
from .inspection import explain, history, last_compile
from .ir import Decline, PassContext, PassResult
from .optim import KitsuneOptimizer, compile_step
from .plugins import PluginPass
from .process import clear_history, register_pass, unregister_pass

__version__ = "0.1.0"

config.check_environment()  # a misspelt KITSUNE_* variable fails here, not at a compile
log.configure_from_env()
torch_compat.install()  # before torch 2.13: fast-path transformer ops traceable with symbolic sizes

__all__ = [
    "Config",
    "Decline",
    "KitsuneConfigError",
    "KitsuneError",
    "KitsuneInvariantError",
    "KitsuneOptimizer",
    "KitsunePluginError",
    "KitsuneUnsupportedError",
    "PassContext",
    "PassResult",
    "PluginPass",
    "clear_history",
    "compile",
    "compile_step",
    "config",
    "explain",
    "history",
    "kitsune",
    "last_compile",
    "register_pass",
    "unregister_pass",
]
