"""The storage layer is the only way to Redis: what the other modules may not do.

``databus/_store/`` holds the key names, the schema, the command builders and the wire;
nothing else imports redis-py, executes commands, translates its errors or spells a
scan-record field or a log-entry word. These tests read the source, so a change that
breaks the rule fails here, naming the file and line.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import databus

PACKAGE = Path(databus.__file__).parent
ROOT = PACKAGE.parent
STORE = PACKAGE / "_store"

#: Record fields and log words, as strings, bytes or the start of an f-string. The
#: clients' NeXus files have an ``end_reason`` of their own (clients/_nexus.py).
VOCABULARY = {"event", "restored", "written"}
PACKAGE_VOCABULARY = {*VOCABULARY, "end_reason"}
FIELD_PREFIXES = ("ch:", "dropped:", "lost:", "dataset:")
#: The blissdata 2.x facade spells BLISS's scan-info key ``end_reason`` (once, as
#: ``END_REASON_KEY``): a key of the scan info, not our record's field.
BLISSDATA_END_REASON = PACKAGE / "blissdata" / "redis_engine" / "scan.py"
#: The bluesky bridges spell event-model's document names, ``event`` among them: a
#: bluesky document, not our log entries' field.
BLUESKY = ROOT / "clients" / "bluesky"


def _sources() -> Iterator[tuple[Path, ast.AST]]:
    """Every module of the package, its clients and hooks, outside the storage layer."""
    for base in (PACKAGE, ROOT / "clients", ROOT / "hooks"):
        for path in sorted(base.rglob("*.py")):
            if STORE not in path.parents:
                yield path, ast.parse(path.read_text(), str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_only_the_storage_layer_imports_redis():
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [_where(path, node) for n in names if n.split(".")[0] == "redis"]
    assert not found, f"redis-py imported outside databus/_store: {found}"


def test_only_the_wire_executes_and_translates():
    """No module outside the store reaches the redis-py client (``bus.redis``, a
    pipeline) or wraps calls in the error translation."""
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("redis", "pipeline"):
                if path.name == "_bus.py" and node.attr == "redis":
                    continue  # Bus.redis: the client below databus, for users
                found.append(f"{_where(path, node)} .{node.attr}")
            if isinstance(node, ast.Name) and node.id in ("translated", "translate"):
                found.append(f"{_where(path, node)} {node.id}")
    assert not found, f"Redis reached or errors translated outside the store: {found}"


def _spells_schema(node: ast.AST, vocabulary: set[str]) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        value = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
        return value in vocabulary or value.startswith(FIELD_PREFIXES)
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        return (
            isinstance(head, ast.Constant)
            and isinstance(head.value, str)
            and head.value.startswith(FIELD_PREFIXES)
        )
    return False


def test_only_the_schema_spells_record_fields_and_log_words():
    found = []
    for path, tree in _sources():
        vocabulary = PACKAGE_VOCABULARY if PACKAGE in path.parents else VOCABULARY
        if path == BLISSDATA_END_REASON:
            vocabulary = vocabulary - {"end_reason"}
        if BLUESKY in path.parents:
            vocabulary = vocabulary - {"event"}
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if id(node) not in docstrings and _spells_schema(node, vocabulary):
                found.append(f"{_where(path, node)} {ast.unparse(node)}")
    assert not found, f"record fields or log words spelled outside _store/schema.py: {found}"


def test_the_builders_are_pure():
    """commands, keys and schema import nothing that talks to a server."""
    for name in ("commands.py", "keys.py", "schema.py"):
        tree = ast.parse((STORE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("wire", "redis") and not (
                    node.level == 1 and node.module == "wire"
                ), f"_store/{name} imports {node.module}"
