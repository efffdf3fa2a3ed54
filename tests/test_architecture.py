"""The package's architecture as a test: its import graph (function-level imports included) has no
circle and points only down the declared layers; no module borrows another's private names or
re-exports what moved; the root stays small, modules stay short, and each says its one job first.

The layer order is declared once, in :data:`LAYERS`, and matches DESIGN.md and docs/ARCHITECTURE.md.
The checks are plain functions of a source tree, so each is also tested on small made-up packages
that break one rule each (the ``test_checker_*`` tests): a check that cannot fail would prove nothing.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "logitleak"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Top to bottom: a module may import from its own layer or any layer below it, never above.
# An entry names a folder or a module (the longest matching entry places a module); a folder's
# own modules may import each other freely, but two folders of one layer import in one direction
# only (no circle between folders either).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),                                           # one module per command
    ("audit", "defend"),                                # the two run skeletons
    ("endpoint", "serve", "guard"),                     # the black-box audit, the server, the proxy
    ("wire", "defenses", "probing", "levels", "capture"),  # the pipeline and what the servers share
    ("models", "data"),                                 # loading models; probe sets
    ("report", "decisions"),                            # read a results table
    # the foundation: plain data and helpers every layer may read
    ("config", "results", "levels.table", "integrity", "errors", "progress", "timing", "userpaths", ""),
)
MAX_ROOT_MODULES = 10
MAX_LINES = 400
MAX_FIRST_LINE = 110

# Known breaks being fixed in open issues, per rule: each listed one must still be broken (the test
# fails once it is fixed, so its allowance goes with the fix), and nothing else may break a rule.
PENDING: dict[str, tuple[str, ...]] = {}


@dataclass
class Module:
    """One module of the tree: its dotted name, file, source and the package modules it imports."""

    name: str
    path: Path
    source: str
    imports: set[str] = field(default_factory=set)
    private: list[tuple[str, str]] = field(default_factory=list)   # (module, _name) borrowed


def _dotted(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_tree(root: Path) -> dict[str, Module]:
    """Every module below ``root`` (a package folder) with the package modules it imports anywhere."""
    modules = {_dotted(root, p): Module(_dotted(root, p), p, p.read_text()) for p in sorted(root.rglob("*.py"))}
    package = root.name

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for mod in modules.values():
        here = mod.name if mod.path.name == "__init__.py" else mod.name.rpartition(".")[0]
        for node in ast.walk(ast.parse(mod.source)):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, a.name)
                           for a in node.names]
            else:
                continue
            for dotted, name in targets:
                if not (dotted == package or dotted.startswith(package + ".")):
                    continue
                target = owner(dotted)
                if target is None or target == mod.name:
                    continue
                mod.imports.add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    mod.private.append((target, name))
    return modules


def layer_of(package: str, module: str, layers=LAYERS) -> tuple[int, str]:
    """(layer index, entry) of ``module``: the longest entry of ``layers`` that contains it."""
    rel = module[len(package) + 1:] if module != package else ""
    best = None
    for i, entries in enumerate(layers):
        for entry in entries:
            inside = "." not in rel if entry == "" else rel == entry or rel.startswith(entry + ".")
            if inside and (best is None or len(entry) > len(best[1])):
                best = (i, entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add its folder to the layer it belongs to")
    return best


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def module_circles(modules: dict[str, Module]) -> list[list[str]]:
    """Circles of imports between modules."""
    return circles({m.name: m.imports for m in modules.values()})


def entry_circles(modules: dict[str, Module], package: str, layers=LAYERS) -> list[list[str]]:
    """Circles between the entries of one layer (folders importing each other both ways)."""
    graph: dict[str, set[str]] = {}
    for m in modules.values():
        a = layer_of(package, m.name, layers)
        for t in m.imports:
            b = layer_of(package, t, layers)
            if a[0] == b[0] and a[1] != b[1]:
                graph.setdefault(a[1], set()).add(b[1])
    return circles(graph)


def upward(modules: dict[str, Module], package: str, layers=LAYERS) -> list[str]:
    """Every import from a lower layer up to a higher one, as 'importer -> imported'."""
    out = []
    for m in modules.values():
        here = layer_of(package, m.name, layers)[0]
        out += [f"{m.name} -> {t}" for t in sorted(m.imports) if layer_of(package, t, layers)[0] < here]
    return sorted(out)


def borrowed(modules: dict[str, Module]) -> list[str]:
    """Every import of another module's ``_private`` name."""
    return sorted(f"{m.name} imports {name} from {t}" for m in modules.values() for t, name in m.private)


def reexports(modules: dict[str, Module]) -> list[str]:
    """Every ``noqa: F401`` (an import kept only to be re-exported or for its side effect)."""
    return sorted(f"{m.name}: {line.strip()}" for m in modules.values()
                  for line in m.source.splitlines() if re.search(r"noqa:[^#]*F401", line))


def root_modules(modules: dict[str, Module], package: str) -> list[str]:
    """The modules that sit at the package root (its ``__init__`` included)."""
    return sorted(m.name for m in modules.values() if m.name.count(".") <= 1 and m.path.parent.name == package)


def long_modules(modules: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    """Modules over ``limit`` lines."""
    return sorted(f"{m.name}: {n} lines" for m in modules.values() if (n := len(m.source.splitlines())) > limit)


def unclear_jobs(modules: dict[str, Module], limit: int = MAX_FIRST_LINE) -> list[str]:
    """Modules whose docstring does not open with one complete line saying its job.

    The first line must exist, be one sentence ending in a full stop (not wrapped onto the next
    line), fit in ``limit`` characters, and, in a module (not a folder's ``__init__``), name one job:
    no ';' joining a second one.
    """
    bad = []
    for m in modules.values():
        doc = ast.get_docstring(ast.parse(m.source))
        first = doc.splitlines()[0].strip() if doc else ""
        package = m.path.name == "__init__.py"
        if not first:
            bad.append(f"{m.name}: no docstring")
        elif not re.search(r"[.!?)]$", first) or (len(doc.splitlines()) > 1 and doc.splitlines()[1].strip()):
            bad.append(f"{m.name}: the first line is not one complete sentence: {first!r}")
        elif len(first) > limit:
            bad.append(f"{m.name}: the first line is {len(first)} characters (at most {limit}): {first!r}")
        elif not package and ";" in first:
            bad.append(f"{m.name}: the first line names more than one job: {first!r}")
    return sorted(bad)


# ---- the package itself ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree() -> dict[str, Module]:
    return read_tree(SOURCE)


def _without_pending(found: list, rule: str) -> list:
    pending = set(PENDING.get(rule, ()))
    stale = pending - {str(f) for f in found}
    assert not stale, f"fixed, so remove from PENDING[{rule!r}]: {sorted(stale)}"
    return [f for f in found if str(f) not in pending]


def test_every_module_has_a_layer(tree):
    for name in tree:
        layer_of(PACKAGE, name)


def test_no_circles_between_modules(tree):
    assert _without_pending(module_circles(tree), "circle") == []


def test_no_circles_between_folders_of_one_layer(tree):
    assert _without_pending(entry_circles(tree, PACKAGE), "folder-circle") == []


def test_imports_only_point_down(tree):
    assert _without_pending(upward(tree, PACKAGE), "upward") == []


def test_no_module_borrows_private_names(tree):
    assert _without_pending(borrowed(tree), "private") == []


def test_no_reexports(tree):
    assert _without_pending(reexports(tree), "reexport") == []


def test_small_root(tree):
    assert len(root_modules(tree, PACKAGE)) <= MAX_ROOT_MODULES, root_modules(tree, PACKAGE)


def test_short_modules(tree):
    assert _without_pending(long_modules(tree), "long") == []


def test_each_module_states_its_job_first(tree):
    assert _without_pending(unclear_jobs(tree), "job") == []


# ---- the checks themselves, on made-up packages that break one rule each -------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": '"""A made-up package."""\n', **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text('"""A folder."""\n')
        path.write_text(text)
    return read_tree(root)


TOY_LAYERS = (("top",), ("mid", "side"), ("low", ""))


def test_checker_reads_function_level_and_relative_imports(tmp_path):
    mods = _package(tmp_path, {
        "low/a.py": '"""A."""\n',
        "low/b.py": '"""B."""\ndef f():\n    from . import a\n    from pkg.mid.c import g\n',
        "mid/c.py": '"""C."""\nimport pkg.low.a\nfrom ..low.b import thing\n',
    })
    assert mods["pkg.low.b"].imports == {"pkg.low.a", "pkg.mid.c"}
    assert mods["pkg.mid.c"].imports == {"pkg.low.a", "pkg.low.b"}
    assert module_circles(mods) == [["pkg.low.b", "pkg.mid.c"]]
    assert upward(mods, "pkg", TOY_LAYERS) == ["pkg.low.b -> pkg.mid.c"]


def test_checker_finds_circles_between_folders_of_one_layer(tmp_path):
    mods = _package(tmp_path, {
        "mid/a.py": '"""A."""\nfrom pkg.side.b import x\n',
        "mid/c.py": '"""C."""\n',
        "side/b.py": '"""B."""\nfrom pkg.mid.c import y\n',
    })
    assert module_circles(mods) == []
    assert entry_circles(mods, "pkg", TOY_LAYERS) == [["mid", "side"]]
    assert upward(mods, "pkg", TOY_LAYERS) == []


def test_checker_places_modules_by_longest_entry(tmp_path):
    layers = (("top",), ("low.table", "low"))
    assert layer_of("pkg", "pkg.low.table", layers) == (1, "low.table")
    assert layer_of("pkg", "pkg.low.other", layers) == (1, "low")
    assert layer_of("pkg", "pkg.errors", TOY_LAYERS) == (2, "")
    with pytest.raises(AssertionError, match="pkg.elsewhere.x is in no layer"):
        layer_of("pkg", "pkg.elsewhere.x", layers)


def test_checker_finds_private_names_and_reexports(tmp_path):
    mods = _package(tmp_path, {
        "low/a.py": '"""A."""\n_hidden = 1\n__all__ = []\n',
        "low/b.py": '"""B."""\nfrom pkg.low.a import _hidden, __all__\nfrom pkg.low import a  # noqa: F401\n',
        "low/c.py": '"""C."""\nfrom pkg.low.a import _hidden as h  # noqa: E402\n',
    })
    assert borrowed(mods) == ["pkg.low.b imports _hidden from pkg.low.a", "pkg.low.c imports _hidden from pkg.low.a"]
    assert reexports(mods) == ["pkg.low.b: from pkg.low import a  # noqa: F401"]


def test_checker_finds_long_modules_and_unclear_jobs(tmp_path):
    mods = _package(tmp_path, {
        "a.py": '"""Reads a thing.\n\nAt length.\n"""\n' + "x = 1\n" * 5,
        "b.py": '"""Reads a thing, and\nwraps onto the next line."""\n',
        "c.py": '"""Reads a thing; writes another."""\n',
        "d.py": "x = 1\n",
        "e.py": '"""' + "Long " * 30 + '."""\n',
    })
    assert long_modules(mods, limit=8) == ["pkg.a: 9 lines"]
    found = unclear_jobs(mods)
    assert [f.split(":")[0] for f in found] == ["pkg.b", "pkg.c", "pkg.d", "pkg.e"]
    assert "not one complete sentence" in found[0] and "more than one job" in found[1]
    assert found[2] == "pkg.d: no docstring" and "151 characters" in found[3]
    assert root_modules(mods, "pkg") == ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e"]
