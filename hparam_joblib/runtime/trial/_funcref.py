"""How a trial process finds the user's training function without the worker ever touching it.

The worker (the ``study.optimize`` loop) must never import or run user code: importing the
user's script runs its module-level code (OpenMP, CUDA, data loading), and a process that did
that can no longer fork safely, nor be cheap to start. So the launcher describes the function by
*where it lives*, and only the trial process loads it:

* ``path``: the function is in the script being run (``__main__`` with a file). The trial process
  runs that file as module ``__mp_main__`` (as ``multiprocessing``'s spawn does; ``__name__`` is
  not ``"__main__"``, so the script's ``if __name__ == "__main__": train()`` does not start a
  search), and aliases it as ``__main__`` so that pickles naming ``__main__`` objects resolve.
  A script started as ``python -m pkg.module`` is found again by that module name (``spec_name``,
  from ``__main__.__spec__``), as ``-m`` did: its parent package is imported first and its
  ``__package__`` is set, so relative imports and ``importlib.resources.files(__package__)`` work
  in the trial exactly as in the launcher.
* ``module``: the function is importable by name (``mypkg.train``): the trial process imports it.
* ``pickled``: neither (a notebook cell, ``python -c``, a function defined inside another): the
  function travels by value with cloudpickle, with what it references.

Either way tracebacks name the user's real file and line. The reference is plain data (strings
and bytes): unpickling it in a worker never imports anything of the user's.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

#: The attribute ``@hparam_search`` puts on the launcher: the function it decorates.
WRAPPED_ATTR = "__hparam_search_func__"
#: The module name a script runs under in a trial process (multiprocessing's convention).
SCRIPT_MODULE = "__mp_main__"


@dataclass(frozen=True)
class FunctionRef:
    """Where the training function lives; plain data, safe to unpickle anywhere."""

    kind: Literal["path", "module", "pickled"]
    qualname: str = ""
    module: str = ""
    #: The script's absolute path (``path``).
    path: str = ""
    #: The module name of a script run with ``python -m`` (``path``; empty for ``python script.py``).
    spec_name: str = ""
    #: The launcher's ``sys.path`` (absolute), so that the script's own imports resolve the same.
    sys_path: tuple[str, ...] = ()
    #: The launcher's ``sys.argv`` (module-level code may read it).
    argv: tuple[str, ...] = ()
    #: cloudpickle bytes (``pickled``).
    payload: bytes = field(default=b"", repr=False)

    def describe(self) -> str:
        """``script.py:train``, ``mypkg.mod:train`` or ``train (by value)``, for messages."""
        if self.kind == "path":
            return f"{os.path.basename(self.path)}:{self.qualname}"
        if self.kind == "module":
            return f"{self.module}:{self.qualname}"
        return f"{self.qualname or 'function'} (shipped by value with cloudpickle)"


def _lookup(root: Any, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_ours(obj: Any, func: Callable[..., Any]) -> bool:
    return obj is func or getattr(obj, WRAPPED_ATTR, None) is func


def _run_as_module(module: Any) -> str:
    """``pkg.train`` when the script was started as ``python -m pkg.train``, else ``""``."""
    name = getattr(getattr(module, "__spec__", None), "name", None)
    return name if isinstance(name, str) and name not in ("__main__", SCRIPT_MODULE) else ""


def make_ref(func: Callable[..., Any]) -> FunctionRef:
    """Describe ``func`` for the trial processes (launcher side).

    Raises:
        TypeError: the function can be found neither by name nor pickled by value.
    """
    qualname = getattr(func, "__qualname__", "")
    module_name = getattr(func, "__module__", "") or ""
    module = sys.modules.get(module_name)
    sys_path = tuple(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    argv = tuple(sys.argv)
    found = None
    if module is not None and qualname and "<" not in qualname:
        try:
            found = _lookup(module, qualname)
        except AttributeError:
            found = None
    if found is not None and _is_ours(found, func):
        main_file = getattr(module, "__file__", None)
        if module_name in ("__main__", SCRIPT_MODULE) and main_file and os.path.exists(main_file):
            return FunctionRef("path", qualname=qualname, module=module_name, path=os.path.abspath(main_file),
                               spec_name=_run_as_module(module), sys_path=sys_path, argv=argv)
        spec = getattr(module, "__spec__", None)
        if module_name not in ("__main__", SCRIPT_MODULE) and spec is not None:
            return FunctionRef("module", qualname=qualname, module=module_name, sys_path=sys_path, argv=argv)
    import cloudpickle

    try:
        payload = cloudpickle.dumps(func)
    except Exception as err:
        raise TypeError(
            f"the training function {qualname or func!r} cannot be sent to the trial processes: it is "
            f"not importable by name and cloudpickle cannot ship it ({type(err).__name__}: {err}); "
            "create such objects (locks, open files, connections, clients) inside the function, or "
            "define the function at the top level of a script or module"
        ) from err
    return FunctionRef("pickled", qualname=qualname, module=module_name, sys_path=sys_path,
                       argv=argv, payload=payload)


def load(ref: FunctionRef) -> Callable[[dict[str, Any]], Any]:
    """Load the training function in this (trial) process; runs the user's module-level code."""
    for entry in reversed(ref.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if ref.argv:
        sys.argv[:] = list(ref.argv)
    if ref.kind == "pickled":
        import cloudpickle

        obj: Any = cloudpickle.loads(ref.payload)
    elif ref.kind == "path":
        obj = _lookup(_run_script(ref), ref.qualname)
    else:
        obj = _lookup(importlib.import_module(ref.module), ref.qualname)
    return cast("Callable[[dict[str, Any]], Any]", getattr(obj, WRAPPED_ATTR, obj))


def _script_spec(ref: FunctionRef) -> importlib.machinery.ModuleSpec:
    """The spec the launcher's ``__main__`` was run from: by module name for ``python -m`` (its
    parent packages are imported, as ``-m`` does), else by file path."""
    if ref.spec_name:
        try:
            spec = importlib.util.find_spec(ref.spec_name)
        except ImportError:
            spec = None
        if spec is not None and spec.loader is not None and spec.has_location:
            return spec
        # Not importable by that name here (a Dask machine without the package): the file itself.
    spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, ref.path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the script {ref.path}")
    return spec


def _run_script(ref: FunctionRef) -> Any:
    """Run the launcher's script as ``__mp_main__`` (aliased ``__main__``); returns the module."""
    spec = _script_spec(ref)
    module = importlib.util.module_from_spec(spec)
    # ``python -m pkg.train``: __package__ "pkg" and __spec__ stay the module's (relative imports
    # resolve against them), only __name__ is not "__main__".
    module.__name__ = SCRIPT_MODULE
    sys.modules[SCRIPT_MODULE] = module
    sys.modules["__main__"] = module
    get_code = getattr(spec.loader, "get_code", None)
    if get_code is None:  # every loader of source or bytecode files has get_code
        raise ImportError(f"cannot load the script {ref.path}")
    # Run the code as runpy does for -m: a loader's exec_module refuses a module whose __name__
    # is not the one it was found under.
    exec(get_code(spec.name), module.__dict__)  # noqa: S102 - the user's own script
    return module
