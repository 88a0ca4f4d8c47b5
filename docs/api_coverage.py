"""API coverage: every public name of funcnn's packages has a docstring and an
entry in the reference pages (docs/api/*.md).

A package's public names are what its `__init__` re-exports explicitly
(`from m import x as x`, also under `if TYPE_CHECKING:` for the lazily loaded
ones) and its `__all__`; for a plain module, its top-level classes and
functions. A name is covered when
- it has a docstring of its own (a constant: a string right after its
  assignment, which is where mkdocstrings reads it from);
- a `::: dotted.path` directive of a reference page documents the same object;
- its package's page names it as `package.name` (the re-exports of another
  package's objects are listed there with a link to their entry).

Used twice: tests/test_docs.py calls `problems()`, which needs no mkdocs, and
mkdocs.yml loads this file as a hook, so `mkdocs build --strict` fails on the
same problems.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# package -> its reference page under docs/api/.
PAGES = {
    "funcnn": "funcnn.md",
    "funcnn.ops": "ops.md",
    "funcnn.rules": "rules.md",
    "funcnn.rules.examples": "rules.md",
    "funcnn.nn": "nn.md",
    "funcnn.nn.models": "models.md",
    "funcnn.training": "training.md",
    "funcnn.training.checkpoint": "training.md",
    "funcnn.training.run": "run.md",
    "funcnn.inspect": "inspect.md",
    "funcnn.inspect.plots": "inspect.md",
    "funcnn.data": "data.md",
    "funcnn.distributed": "distributed.md",
}
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def _tree(module: ModuleType) -> ast.Module:
    return ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))


def _statements(body: list[ast.stmt]):
    """Top-level statements, and those under a top-level `if` (TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
        else:
            yield node


def public_names(module: ModuleType) -> list[str]:
    """The module's public names, in source order."""
    names: list[str] = []
    is_package = Path(inspect.getfile(module)).name == "__init__.py"
    for node in _statements(_tree(module).body):
        if isinstance(node, ast.ImportFrom):
            names += [a.name for a in node.names if a.asname == a.name]
        elif not is_package and isinstance(
            node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef
        ):
            names.append(node.name)
    names += list(getattr(module, "__all__", ()))
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def _origin(module: ModuleType, name: str) -> ModuleType:
    """The module whose source assigns `name`, following explicit re-exports."""
    for node in _statements(_tree(module).body):
        if isinstance(node, ast.ImportFrom) and node.module:
            if any(a.name == name and a.asname == name for a in node.names):
                source = importlib.import_module(node.module)
                if hasattr(source, "__path__") or name in vars(source):
                    return _origin(source, name)
    return module


def _constant_docstring(module: ModuleType, name: str) -> str | None:
    """The string literal right after `name = ...` at the top of its module."""
    body = _tree(_origin(module, name)).body
    for node, after in zip(body, body[1:]):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                value = after.value.value
                return value if isinstance(value, str) else None
    return None


def docstring(module: ModuleType, name: str) -> str | None:
    """The docstring of `module.name`, or None (auto-generated ones count as none)."""
    obj = getattr(module, name)
    if inspect.ismodule(obj) or inspect.isroutine(obj):
        return obj.__doc__ or None
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # NamedTuple and dataclass write "Name(field, ...)" when none is given.
        auto = isinstance(doc, str) and doc.startswith(f"{obj.__name__}(")
        return None if auto else doc
    return _constant_docstring(module, name)


def resolve(path: str) -> Any:
    """The object a dotted path names. As Python reads it first: each part an
    attribute of the one before (`funcnn.ops.dense` is the function, not its
    module of the same name), or else a submodule to import; failing that, as
    mkdocstrings reads it: the longest importable module, then attributes
    (`funcnn.ops.dense.dense`). Raises ImportError."""
    first, *rest = path.split(".")
    try:
        obj = importlib.import_module(first)
        for i, part in enumerate(rest, start=1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                obj = importlib.import_module(".".join([first, *rest[:i]]))
        return obj
    except ImportError:
        pass
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            break
        return obj
    raise ImportError(f"{path!r} names no module attribute")


def _is_module(path: str) -> bool:
    """Whether `path` is also a submodule (mkdocstrings then documents that)."""
    try:
        return importlib.util.find_spec(path) is not None
    except (ImportError, AttributeError, ValueError):
        return False


def problems(api_dir: Path, pages: dict[str, str] = PAGES) -> list[str]:
    """Every public name without a docstring, a reference entry or a listing on
    its package's page, and every directive that names nothing.

    Args:
        api_dir: the folder of the reference pages, docs/api.
        pages: package -> the file name of its page in `api_dir`.

    Returns:
        One line per problem; empty when the reference is complete.
    """
    out: list[str] = []
    documented: dict[int, str] = {}
    texts = {}
    for page in sorted(api_dir.glob("*.md")):
        texts[page.name] = page.read_text(encoding="utf-8")
        for path in DIRECTIVE.findall(texts[page.name]):
            try:
                obj = resolve(path)
            except ImportError as err:
                out.append(f"api/{page.name}: '::: {path}' names nothing ({err})")
                continue
            documented[id(obj)] = path
            if not inspect.ismodule(obj) and _is_module(path):
                out.append(
                    f"api/{page.name}: '::: {path}' renders the module {path}, not "
                    f"the {type(obj).__name__} of that name; write '::: {path}."
                    f"{path.rsplit('.', 1)[1]}'"
                )
    for package, page in pages.items():
        module = importlib.import_module(package)
        text = texts.get(page, "")
        for name in public_names(module):
            full = f"{package}.{name}"
            if not docstring(module, name):
                out.append(f"{full} has no docstring")
            if id(getattr(module, name)) not in documented:
                out.append(f"{full} has no '::: ...' entry in docs/api/*.md")
            if not re.search(rf"(?<![\w.]){re.escape(full)}(?![\w])", text):
                out.append(f"{full} is not named on api/{page}")
    return out


# ------------------------------------------------------------------ mkdocs hook

log = logging.getLogger("mkdocs.hooks.api_coverage")


def on_config(config):
    """mkdocs hook: document this checkout's funcnn, then report every problem
    as a warning (a failed build under --strict)."""
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    for problem in problems(Path(config["docs_dir"]) / "api"):
        log.warning("API coverage: %s", problem)
    return config
