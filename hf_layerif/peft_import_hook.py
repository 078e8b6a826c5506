"""Run the LAYERIF registration right after ``peft`` is imported (for ``import hf_layerif`` before peft).

A ``sys.meta_path`` finder answers only for the top-level ``peft`` module: it asks the other finders for the real
spec and wraps its loader so that, once peft's ``__init__`` has executed, the PEFT type is registered. The finder
stays installed until peft is really executed: a mere ``importlib.util.find_spec("peft")`` (transformers probes
for peft that way while loading any model) returns a spec that is never executed, and must not disarm it.
Registration errors are warned about, never raised into peft's import. When peft is first imported by the tuner
package itself (``from hf_layerif import LayerIFConfig`` before peft), the finder leaves registration to that
package, which registers once its own import finishes.
"""

from __future__ import annotations

import importlib.abc
import sys


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _remove_finder()
        if f"{__package__}.tuners" in sys.modules:
            # the tuner package is imported (it registered at its end) or being imported right now: peft was
            # imported from inside it, and the package registers when its own import finishes
            return
        try:
            from .tuners import register  # importing the tuner package registers the type

            register()
        except Exception as err:  # never break peft's own import
            import warnings

            warnings.warn(f"hf-layerif could not register the LAYERIF PEFT type: {err}", RuntimeWarning, stacklevel=2)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PeftImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _PeftImportFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PeftImportFinder)]


def register_after_peft_import() -> None:
    """Install the finder (idempotent)."""
    if not any(isinstance(f, _PeftImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportFinder())
