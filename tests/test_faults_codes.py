"""The README's exit-code table is the contract: it lists exactly the codes rextransfer.core.errors
defines, and the fault suite asserts every code in it (but 1, which only a bug may produce)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from rextransfer.core import errors

REPO = Path(__file__).resolve().parent.parent


def readme_table() -> dict[int, str]:
    """code -> meaning, from the table under '## Exit codes' in README.md."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$", line)
        if m:
            rows[int(m.group(1))] = m.group(2)
    return rows


def error_codes() -> dict[int, str]:
    """Every EXIT_* constant and every UserError subclass's code in core/errors.py."""
    codes = {value: name for name, value in vars(errors).items() if name.startswith("EXIT_")}
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.UserError) and cls is not errors.UserError:
            assert cls.exit_code in codes, (cls.__name__, cls.exit_code)
    return codes


def asserted_codes() -> set[int]:
    """Codes the fault suite expects: one_line(result, CODE, ...) and `.returncode == CODE`."""
    found = set()
    for path in REPO.glob("tests/test_faults*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "one_line" and len(node.args) > 1:
                if isinstance(node.args[1], ast.Constant):
                    found.add(node.args[1].value)
            if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "returncode"
                    and isinstance(node.ops[0], ast.Eq) and isinstance(node.comparators[0], ast.Constant)):
                found.add(node.comparators[0].value)
    return found


def test_the_readme_table_lists_exactly_the_codes_errors_defines():
    table = readme_table()
    assert set(table) == {0, 1} | set(error_codes()), (sorted(table), sorted(error_codes()))
    assert "internal error" in table[1] and "success" in table[0]
    assert "SIGTERM" in table[errors.EXIT_INTERRUPTED]  # both signals stop with 130, as documented


def test_the_fault_suite_asserts_every_documented_code_and_no_other():
    table, asserted = readme_table(), asserted_codes()
    assert asserted <= set(table), asserted - set(table)
    assert set(table) - {1} <= asserted, set(table) - {1} - asserted
    assert 1 not in asserted  # exit 1 is a bug, never an expected answer
