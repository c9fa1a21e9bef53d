"""Backtrader's optional subpackages, loaded on first use instead of at ``import backtrader``.

``import backtrader`` executes every indicator, study, analyzer, observer and strategy module
it ships (about 0.1 s of CPU, most of it ``backtrader.indicators``), although a ratchet
backtest uses none of them: its feed, broker, Strategy and recorder need only Backtrader's
core modules. ``defer_backtrader_extras()`` (called by ``cli.py`` before any command imports
Backtrader) installs an import hook that creates those subpackages as modules whose code runs
on the first attribute read (``bt.indicators.SMA``, ``from backtrader.indicators import
ATR``), so code that does use them sees the same modules, only loaded later.
"""

from __future__ import annotations

import logging
import sys
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader

logger = logging.getLogger(__name__)

#: Subpackages of Backtrader executed on first use. ``studies.contrib`` subclasses an
#: indicator at import time, so it is deferred with ``indicators`` (and runs when
#: ``studies`` does).
DEFERRED: frozenset[str] = frozenset({
    "backtrader.indicators", "backtrader.studies", "backtrader.studies.contrib",
    "backtrader.analyzers",
    "backtrader.observers", "backtrader.strategies", "backtrader.talib",
})


# Plain classes: the import protocols need only these methods, and importlib.abc costs
# ~5 ms to import.
class _DeferredLoader:
    """Wraps a module's own loader: ``exec_module`` only arms a module ``__getattr__``
    (PEP 562) that runs the real loader the first time a missing attribute is read."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None  # the default module, with __path__/__file__ set from the spec

    def exec_module(self, module: ModuleType) -> None:
        real = self.real

        def load_on_use(name: str) -> Any:
            # Runs once: removing the hook first keeps a failed lookup inside the module's
            # own code from recursing here.
            module.__dict__.pop("__getattr__", None)
            logger.debug("loading deferred module %s (for %s)", module.__name__, name)
            real.exec_module(module)
            # Deferred subpackages fill in their parent when they run (studies.contrib sets
            # bt.studies.Fractal): run those now too.
            prefix = module.__name__ + "."
            for sub in sorted(DEFERRED):
                child = sys.modules.get(sub)
                if sub.startswith(prefix) and child is not None and \
                        "__getattr__" in vars(child):
                    child.__getattr__("__name__")
            try:
                return module.__dict__[name]
            except KeyError:
                raise AttributeError(f"module {module.__name__!r} has no attribute "
                                     f"{name!r}") from None

        module.__getattr__ = load_on_use  # type: ignore[method-assign]


class _DeferFinder:
    """Finds the ``DEFERRED`` modules as usual and wraps their loader."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in DEFERRED:
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = cast("Loader", _DeferredLoader(spec.loader))
        return spec


def defer_backtrader_extras() -> bool:
    """Install the hook (once). False when Backtrader is already imported: too late."""
    if "backtrader" in sys.modules:
        return False
    if not any(isinstance(f, _DeferFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferFinder())
    return True
