"""The table catalogue (``common/lake.py`` ``ALL_TABLES``) lists every table the code writes.

Static and Spark-free: the sources under jobs/, common/ and raytrain/ are parsed, not run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from common import lake as L

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("jobs", "common", "raytrain") for p in (ROOT / d).rglob("*.py"))
LAYERS = ("bronze", "silver", "gold", "quarantine", "audit", "models", "metrics", "influence")
TABLE_NAME = re.compile(rf"(?:{'|'.join(LAYERS)})/[a-z_]+")
# Lake calls that write a table named by their argument
WRITES = {"write", "replace_rows", "merge_insert_new"}
# lake paths that are not Delta tables (the Spark ML model directory of a run)
NOT_DELTA = {L.MODELS_ALS_MODEL}

CONSTANTS = {k: v for k, v in vars(L).items()
             if k.isupper() and isinstance(v, str) and TABLE_NAME.fullmatch(v)}


def _trees():
    for path in SOURCES:
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def _const_name(node) -> str | None:
    """``L.SILVER_EVENTS`` / ``SILVER_EVENTS`` (a common.lake table constant) -> its name."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
    return name if name in CONSTANTS else None


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def test_every_table_constant_is_catalogued():
    missing = sorted(v for v in CONSTANTS.values() if v not in L.ALL_TABLES and v not in NOT_DELTA)
    assert missing == [], f"common/lake.py defines tables missing from ALL_TABLES: {missing}"
    assert len(set(L.ALL_TABLES)) == len(L.ALL_TABLES)


def test_tables_are_named_by_their_constant_not_by_literals():
    """No module other than common/lake.py spells a table name as a constant of its own or passes
    a literal one to the lake, so a table cannot exist outside the catalogue."""
    found = []
    for rel, tree in _trees():
        if rel == "common/lake.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                v = node.value.value
                if isinstance(v, str) and TABLE_NAME.fullmatch(v):
                    found.append(f"{rel}:{node.lineno} defines {v!r}")
            if isinstance(node, ast.Call) and _call_name(node) in WRITES | {"read", "path"}:
                for a in node.args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and (
                            TABLE_NAME.fullmatch(a.value)):
                        found.append(f"{rel}:{node.lineno} {_call_name(node)}({a.value!r})")
    assert found == []


def _written() -> dict[str, set[str]]:
    """table -> the files that write it: a constant passed to a write call, or referenced in a
    function that writes a table held in a variable (transform's loop over its gold tables)."""
    out: dict[str, set[str]] = {}
    trees = list(_trees())
    # helpers that write the table they are given (ingest's update_index(..., table=...))
    helpers = {fn.name for _, tree in trees for fn in ast.walk(tree)
               if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
               and any(isinstance(n, ast.Call) and _call_name(n) in WRITES and len(n.args) > 1
                       and isinstance(n.args[1], ast.Name) for n in ast.walk(fn))}
    for rel, tree in trees:
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and _call_name(call) in helpers:
                for a in [*call.args, *(k.value for k in call.keywords)]:
                    if _const_name(a):
                        out.setdefault(CONSTANTS[_const_name(a)], set()).add(rel)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and _call_name(n) in WRITES]
            for call in calls:
                table_arg = call.args[1] if len(call.args) > 1 else None
                named = _const_name(table_arg) if table_arg is not None else None
                if named:
                    out.setdefault(CONSTANTS[named], set()).add(rel)
                elif table_arg is not None and isinstance(table_arg, ast.Name):
                    for n in ast.walk(fn):
                        c = _const_name(n)
                        if c and isinstance(n, ast.Attribute):
                            out.setdefault(CONSTANTS[c], set()).add(rel)
    return out


def test_every_table_written_is_catalogued_and_every_catalogued_table_is_written():
    written = _written()
    uncatalogued = sorted(t for t in written if t not in L.ALL_TABLES)
    assert uncatalogued == [], f"written but not in ALL_TABLES: {uncatalogued}"
    for table in ("bronze/events", "silver/events", "gold/splits", "metrics/evaluation"):
        assert table in written, f"the scan no longer finds the writer of {table}"
    never = sorted(t for t in L.ALL_TABLES if t not in written)
    assert never == [], f"in ALL_TABLES but no code writes them: {never}"
