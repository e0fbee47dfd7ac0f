"""The exceptions kitsune raises on purpose."""


class KitsuneError(Exception):
    """Base class of every error kitsune raises deliberately."""


class KitsuneConfigError(KitsuneError, ValueError):
    """An unknown option or mode, a value of the wrong type, or conflicting settings."""


class KitsunePluginError(KitsuneError):
    """A pass plugin that cannot be registered, imported, or run (raised when strict)."""


class KitsuneUnsupportedError(KitsuneError):
    """A graph kitsune cannot compile (raised only when ``strict=True``; else it falls back)."""


class KitsuneInvariantError(KitsuneError):
    """A pass left the graph in a state that breaks an IR invariant (debug mode)."""
