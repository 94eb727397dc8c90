"""The package layout: every import (function-local ones too) goes to the module's own layer or a
lower one, as written in rextransfer/__init__.py, and sibling packages of one layer stay apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rextransfer

PACKAGE = Path(rextransfer.__file__).parent


def layers_from_docstring() -> dict[str, int]:
    """{"cli": 6, "compare": 5, ...} parsed from the package docstring (the one place it is written)."""
    layers, current = {}, None
    for line in rextransfer.__doc__.splitlines():
        m = re.match(r"\s+(\d+)?\s+(\w+)/\s", line + " ")
        if m:
            current = int(m.group(1)) if m.group(1) else current
            layers[m.group(2)] = current
    return layers


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every rextransfer import in a file."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names] if not node.module else [(node.lineno, target)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "rextransfer"]


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def test_the_docstring_names_every_subpackage():
    layers = layers_from_docstring()
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(layers) == subpackages, (set(layers), subpackages)
    assert layers["core"] < layers["config"] < layers["data"] == layers["models"] < layers["train"] < layers["compare"] < layers["cli"]


def test_no_module_imports_from_a_higher_layer_or_a_sibling():
    layers = layers_from_docstring()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts
        if len(own) == 1:  # rextransfer/__init__.py: the version only
            continue
        mine = own[0]
        for line, module in imports_of(path):
            theirs = package_of(module)
            if theirs is None or theirs == mine:
                continue
            if layers[theirs] >= layers[mine]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({mine}, layer {layers[mine]}) "
                                f"imports {module} ({theirs}, layer {layers[theirs]})")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a data module importing from train is reported."""
    fake = PACKAGE / "data" / "_layer_probe.py"
    fake.write_text("def f():\n    from ..train.loop import train\n")
    try:
        imports = imports_of(fake)
    finally:
        fake.unlink()
    assert (2, "rextransfer.train.loop") in imports
