"""The one allow-list unpickler of the toolkit: reads pickles from outside without running their code.

Foreign weight files come as pickles (DDAMFN's whole-module ``MFN_msceleb.pth``, FLAME's Python 2
``generic_model.pkl`` with chumpy arrays). Unpickling normally resolves any global the file names
and may call it, so a malicious file can run arbitrary code. :class:`AllowListUnpickler` resolves a
global only when it is listed: by its exact ``"module.name"`` (:attr:`~AllowListUnpickler.allowed`)
or by a module family mapped to a factory of inert stand-ins (:attr:`~AllowListUnpickler.families`);
every other global is refused before it is called, with an error naming it. Persistent references
(pickle's out-of-band objects) are left to the caller: :func:`torch.load` resolves its storages there,
and a reader of plain pickles refuses them (:meth:`AllowListUnpickler.refuse_persistent`).

Users: :mod:`networks.weights` (whole pickled modules, through ``torch.load(pickle_module=...)``)
and :mod:`networks.smirk.flame` (the FLAME model and SMIRK's asset files).
"""

from __future__ import annotations

import importlib
import pickle
import types
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

__all__ = ["AllowListUnpickler", "UnsafePickleError", "numpy_multiarray"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle refers to a global outside the allow-list; nothing of it was called.

    Attributes:
        global_name: the refused global as ``"module.name"`` (e.g. ``"posix.system"``).
        path: the file, when known.
    """

    def __init__(self, global_name: str, path: str | None = None, what: str = "") -> None:
        self.global_name = global_name
        self.path = path
        where = f"{path}: " if path else ""
        allowed = f" ({what})" if what else ""
        super().__init__(
            f"{where}refusing to unpickle global {global_name!r}: it is not in the allow-list{allowed}. "
            "The file may be malicious or not a supported file."
        )


class AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only listed globals.

    Configure a subclass (or use :meth:`configured`) with:

    Attributes:
        allowed: ``{"module.name": object}``: globals resolved to the given object (a real class or
            function known to be harmless, or an inert stand-in).
        families: ``{"module prefix": factory(module, name) -> object}``: every global whose module is
            the prefix or below it resolves through the factory (e.g. ``chumpy.*`` → stand-ins that
            only record their state).
        source: the file being read, named in errors.
        description: what the allow-list admits, for the error message.

    Raises (from :meth:`find_class`, via :meth:`refuse`):
        UnsafePickleError: a global outside the allow-list; subclasses may raise their own error type.
    """

    allowed: Mapping[str, Any] = {}
    families: Mapping[str, Callable[[str, str], Any]] = {}
    source: str | None = None
    description: str = ""

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        for prefix, factory in self.families.items():
            if module == prefix or module.startswith(prefix + "."):
                return factory(module, name)
        raise self.refuse(key)

    def refuse_persistent(self, pid: Any) -> Any:
        """A ``persistent_load`` for plain pickles, which have no out-of-band objects: always refuses."""
        raise self.refuse(f"persistent reference {pid!r}")

    def refuse(self, global_name: str) -> Exception:
        """The exception raised for a refused global (override to raise a domain error)."""
        return UnsafePickleError(global_name, self.source, self.description)

    @classmethod
    def configured(cls, source: str | None = None, **attributes: Any) -> type[AllowListUnpickler]:
        """A subclass bound to one file (``source``) and any other class attributes."""
        return type(cls.__name__, (cls,), {"source": source, **attributes})

    @classmethod
    def load_file(cls, file: BinaryIO, source: str | None = None, **kwargs: Any) -> Any:
        """Unpickle an open binary file through this allow-list (``kwargs`` as for ``pickle.Unpickler``)."""
        return cls.configured(source)(file, **kwargs).load()

    @classmethod
    def as_pickle_module(cls, source: str | None = None) -> types.ModuleType:
        """A ``pickle``-like module for ``torch.load(pickle_module=...)`` that unpickles through this class.

        ``torch.load`` subclasses ``module.Unpickler`` (to resolve storages and tensors itself) and
        calls ``module.load``; both go through the allow-list.
        """
        bound = cls.configured(source)
        module = types.ModuleType(f"{__name__}.{cls.__name__}")
        module.Unpickler = bound  # type: ignore[attr-defined]
        module.load = lambda file, **kw: bound(file, **kw).load()  # type: ignore[attr-defined]
        module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
        return module


def numpy_multiarray() -> types.ModuleType:
    """numpy's ``multiarray`` module: ``numpy._core.multiarray`` (numpy 2) or ``numpy.core.multiarray`` (1.x).

    Imported by module name because numpy 1.26 ships a ``numpy._core`` stub without ``multiarray``.

    Raises:
        ImportError: neither exists.
    """
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("numpy has neither numpy._core.multiarray nor numpy.core.multiarray")
