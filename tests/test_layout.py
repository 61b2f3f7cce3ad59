"""The layout rules of docs/architecture.md, checked on the source: no module over 800 lines,
and no import of another module's private (``_name``) symbol (the compiled ``_C`` aside)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "bulkformer").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])
MAX_LINES = 800
ALLOWED = {"_C"}  # the compiled extension


def test_sources_are_found():
    assert len(SOURCES) > 50 and any(p.name == "bulkformer.py" for p in SOURCES)


def test_no_module_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and name not in ALLOWED:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{name}")
    return bad


def test_no_private_symbol_is_imported_across_modules():
    bad = [b for p in SOURCES for b in _private_imports(p)]
    assert not bad, "private symbols imported from another module:\n" + "\n".join(bad)


def test_the_check_catches_a_private_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .probe import (\n    linear_probe,\n    _logreg,\n)\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert _private_imports(f) == ["m.py:1 probe._logreg"]
    finally:
        ROOT = old
