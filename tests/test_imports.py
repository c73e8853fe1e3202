"""No code reaches into another module's private names (an AST scan of the project).

Flagged, in ``c2cjax/``, ``tests/``, ``benchmarks/`` and ``examples/``:
- ``from m import _x`` where ``m`` is a project module (``c2cjax...``, ``tests...`` or a
  sibling file such as ``hf_tiny``), relative imports included;
- ``alias._x`` where ``alias`` names an imported project module;
- ``obj._x`` on any object but ``self``/``cls`` when ``_x`` is a private name that another
  project file defines (``def _x``, ``class _X``, ``self._x = ...``, a module-level
  ``_x = ...``) and this file does not: e.g. ``lm._generate`` outside the model's module.
Dunder names are never flagged.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIRS = ("c2cjax", "tests", "benchmarks", "examples")

# (file relative to the root, "expression._name") pairs tolerated until their owner fixes them.
ALLOWED: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _files(root: pathlib.Path):
  for d in DIRS:
    yield from sorted((root / d).rglob("*.py")) if (root / d).is_dir() else ()


def _module_names(root: pathlib.Path) -> set[str]:
  """Dotted names of every project module and package, and bare names of sibling files."""
  names = set()
  for path in _files(root):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    for i in range(1, len(parts) + 1):
      names.add(".".join(parts[:i]))
    names.add(parts[-1])  # tests import siblings as top-level modules (hf_tiny)
  return names


def _defined_private(tree: ast.AST) -> set[str]:
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      if _private(node.name):
        out.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in targets:
        for sub in ast.walk(t):
          if isinstance(sub, ast.Name) and _private(sub.id):
            out.add(sub.id)
          elif (isinstance(sub, ast.Attribute) and _private(sub.attr)
                and isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls")):
            out.add(sub.attr)
  return out


def scan(root: pathlib.Path = ROOT) -> list[str]:
  """Every offence under ``root``, as ``"file:line: what"``."""
  modules = _module_names(root)
  trees = {p: ast.parse(p.read_text(), str(p)) for p in _files(root)}
  defined = {p: _defined_private(t) for p, t in trees.items()}
  problems = []
  for path, tree in trees.items():
    rel = path.relative_to(root).as_posix()
    elsewhere = set().union(*(d for p, d in defined.items() if p != path)) - defined[path]
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name in modules:
            aliases.add(a.asname or a.name.split(".")[0])
      elif isinstance(node, ast.ImportFrom):
        project = node.level > 0 or (node.module or "") in modules
        for a in node.names:
          if project and _private(a.name):
            problems.append(f"{rel}:{node.lineno}: from {node.module or '.'} import {a.name}")
          full = f"{node.module}.{a.name}" if node.module else a.name
          if project and (full in modules or a.name in modules):
            aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Attribute) and _private(node.attr)):
        continue
      base = node.value
      if isinstance(base, ast.Name) and base.id in ("self", "cls"):
        continue
      what = f"{ast.unparse(base)}.{node.attr}"
      if (rel, what) in ALLOWED:
        continue
      if isinstance(base, ast.Name) and base.id in aliases:
        problems.append(f"{rel}:{node.lineno}: {what} (private name of a project module)")
      elif node.attr in elsewhere:
        problems.append(f"{rel}:{node.lineno}: {what} (private to another module)")
  return problems


def test_no_private_imports():
  problems = scan()
  assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_scan_catches_offences(tmp_path):
  """The scan flags each kind of offence (so the test above can fail)."""
  pkg = tmp_path / "c2cjax"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "model.py").write_text(
      "def _round_up(n, m):\n  return n\n\n"
      "class LM:\n  def __init__(self):\n    self._generate = None\n"
      "  def run(self):\n    return self._generate\n")
  (pkg / "user.py").write_text(
      "from c2cjax.model import _round_up, LM\nfrom c2cjax import model as m\n"
      "def f(lm: LM, args):\n  args._child\n  lm.__class__\n  m._round_up(1, 2)\n"
      "  return lm._generate\n")
  found = "\n".join(scan(tmp_path))
  assert "user.py:1: from c2cjax.model import _round_up" in found
  assert "user.py:6: m._round_up" in found
  assert "user.py:7: lm._generate" in found
  assert "_child" not in found and "__class__" not in found and "model.py" not in found
