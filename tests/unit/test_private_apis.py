"""Every private API of another package that our code uses is listed in docs/ARCHITECTURE.md's
"Private APIs we rely on" table, and every private name the table lists is still used (#22).

What counts as private use (found by reading the source, not by running it):
* an import from a module path with a ``_private`` part (``optuna.storages._rdb.models``), or of a
  ``_private`` name from another package;
* an import of an undocumented ``multiprocessing`` submodule (``forkserver``, ``spawn``, ``util``,
  ...) and every name used from it;
* ``obj._name`` where ``_name`` is not defined by our own code (a module-level name, a method or
  class of ours, an attribute set on ``self``), and an assignment to one;
* a ``_private`` name of another package's base class that a class of ours overrides or uses on
  ``self`` (found by importing the class and reading its bases);
* the same imports in code we run with ``python -c "..."``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "hparam_joblib"
#: multiprocessing's documented submodules; any other is an internal.
DOCUMENTED_MP = {"connection", "dummy", "managers", "pool", "shared_memory", "sharedctypes"}
#: Documented APIs that start with an underscore.
DOCUMENTED = {"_exit", "_asdict", "_fields", "_make", "_getframe"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _own_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Names our code defines: functions, methods, classes, module-level names, attributes set
    on ``self``/``cls`` (``obj._name`` with one of these is ours)."""
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.alias):
                own.add(node.asname or node.name.split(".")[0])
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                own.add(node.attr)
    return own


#: Bases whose private names are Python's own machinery, not an API we rely on.
_MACHINERY = ("abc", "typing", "typing_extensions", "builtins")


def _foreign_private_names(cls: type) -> set[str]:
    """The private names another package's base classes of ``cls`` define or use on ``self``."""
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("hparam_joblib") or base.__module__ in _MACHINERY:
            continue
        names |= {n for n in vars(base) if _private(n)}
        try:
            names |= set(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(base)))
        except (OSError, TypeError):
            pass
    return names


def _module_of(path: Path) -> object:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return importlib.import_module(name.removesuffix(".__init__"))


def _class_uses(path: Path, tree: ast.Module) -> set[str]:
    """In our classes that extend another package's class: the private names of that class we
    override or use on ``self``."""
    found: set[str] = set()
    module = _module_of(path)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(module, node.name, None)
        if not isinstance(cls, type):
            continue
        foreign = _foreign_private_names(cls)
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and inner.name in foreign:
                found.add(inner.name)
            elif (isinstance(inner, ast.Attribute) and inner.attr in foreign
                  and isinstance(inner.value, ast.Name) and inner.value.id in ("self", "cls")):
                found.add(inner.attr)
    return found


def used_private_apis() -> dict[str, set[str]]:
    """Symbol -> the files that use it."""
    trees = _modules()
    own = _own_names(trees)
    uses: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        where = str(path.relative_to(REPO))
        internal_aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if node.module.startswith("hparam_joblib"):
                    continue
                if any(_private(part) for part in node.module.split(".")):
                    uses[node.module].add(where)
                for alias in node.names:
                    if _private(alias.name):
                        uses[f"{node.module}.{alias.name}"].add(where)
                    full = f"{node.module}.{alias.name}"
                    if (node.module == "multiprocessing" and alias.name not in DOCUMENTED_MP
                            and importlib.util.find_spec(full) is not None):
                        internal_aliases[alias.asname or alias.name] = full
                        uses[full].add(where)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if not alias.name.startswith("hparam_joblib") and any(_private(p) for p in alias.name.split(".")):
                        uses[alias.name].add(where)
        for node in ast.walk(tree):  # code run by `python -c "..."` in a subprocess
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for module in re.findall(r"(?:from|import) ([A-Za-z_][\w.]*)", node.value):
                    if not module.startswith("hparam_joblib") and any(_private(p) for p in module.split(".")):
                        uses[module].add(where)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if isinstance(node.value, ast.Name) and node.value.id in internal_aliases:
                uses[f"{internal_aliases[node.value.id]}.{node.attr}"].add(where)
            elif _private(node.attr) and node.attr not in DOCUMENTED and not on_self and (
                node.attr not in own or isinstance(node.ctx, ast.Store)  # setting another's attribute
            ):
                uses[node.attr].add(where)
        for name in _class_uses(path, tree):
            uses[name].add(where)
    return dict(uses)


def listed_private_apis() -> str:
    """The first column of the table, as one text."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## Private APIs we rely on", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| symbol")]
    return "\n".join(row.split(" | ")[0] for row in rows)


def _listed(symbol: str, column: str) -> bool:
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", column))
    parts = {part for name in names for part in name.split(".")}
    if "." in symbol:  # a module path, or a name of one: listed whole, or its module as a prefix
        return symbol in names or any(n.startswith(symbol + ".") or symbol.startswith(n + ".") for n in names if "." in n)
    return symbol in parts


def test_every_private_api_we_use_is_listed() -> None:
    column = listed_private_apis()
    missing = {s: sorted(f) for s, f in used_private_apis().items() if not _listed(s, column)}
    assert not missing, f"private APIs used but not in docs/ARCHITECTURE.md's table: {missing}"


def test_every_private_name_listed_is_still_used() -> None:
    used = used_private_apis()
    parts = {part for symbol in used for part in symbol.split(".")}
    listed = {p for n in re.findall(r"`([^`]+)`", listed_private_apis())
              for p in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", n) if _private(p)}
    stale = sorted(listed - parts)
    assert not stale, f"docs/ARCHITECTURE.md lists private names the code no longer uses: {stale}"


def test_the_scan_finds_a_new_private_use(tmp_path: Path) -> None:
    """The scanner itself: a private attribute of another package, and a private import."""
    source = "import optuna\nfrom optuna.storages._rdb import models\nx = optuna.Study._brand_new_private\n"
    tree = ast.parse(source)
    found = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _private(n.attr)}
    assert found == {"_brand_new_private"}
    assert not _listed("_brand_new_private", listed_private_apis())
    assert _listed("optuna.storages._rdb", listed_private_apis())


def test_only_the_storage_package_talks_sql() -> None:
    """Optuna's tables are read and written by ``storage/`` alone (the preloaded server only
    imports SQLAlchemy ahead of time); anything else goes through it."""
    talking = []
    for path, tree in _modules().items():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "storage" or rel == Path("runtime/loops/_zygote.py"):
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            talking += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("sqlite3", "sqlalchemy", "psycopg", "psycopg2")]
    assert not talking, talking
