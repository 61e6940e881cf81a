"""The message catalogue: find every message the service can send, keep the .po in step, compile it.

    .venv/bin/python -m scripts.i18n extract   # add new English messages to the .po (empty msgstr)
    .venv/bin/python -m scripts.i18n compile   # write the .mo next to the .po (commit both)
    .venv/bin/python -m scripts.i18n check     # exit 1 when a message has no translation or the .mo is stale

Messages are found by reading the source (no import of the modules scanned): the default message of
every error code (``app/i18n.default_messages``), and every string literal given as the message of
a domain error — ``errors.NotFound("No such binding.")``, ``InvalidState(message="…")`` or the
``_invalid(reason, message)`` helper of the ID-number check — and every literal marked with
``N_("…")`` (app/i18n.py: standard texts that are not errors). Messages built at run time cannot be
found; at run time they fall back to the code's default text (app/i18n.py).
"""

from __future__ import annotations

import ast
import io
import sys
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
PO = ROOT / "app" / "translations" / "zh" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
SKIP_DIRS = {".venv", "tests", "sandbox", "migrations", "bench", "scripts", "instance", ".git", "node_modules"}
HELPERS = {"_invalid": 1, "N_": 0}  # helper name → position of its message argument


def _error_class_names() -> set[str]:
    from app import errors
    from app.i18n import default_messages

    default_messages()  # imports nothing more; the classes are those of app/errors.py
    names = {"DomainError"}
    pending = [errors.DomainError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        names.add(cls.__name__)
    return names


def _source_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = set(path.relative_to(ROOT).parts[:-1])
        if not parts & SKIP_DIRS:
            files.append(path)
    return files


def _message_argument(call: ast.Call, names: set[str]) -> ast.expr | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in HELPERS:
        position = HELPERS[name]
        return call.args[position] if len(call.args) > position else None
    if name not in names:
        return None
    for keyword in call.keywords:
        if keyword.arg == "message":
            return keyword.value
    return call.args[0] if call.args else None


def source_messages() -> dict[str, list[str]]:
    """English message literal → where it is used (``path:line``)."""
    names = _error_class_names()
    found: dict[str, list[str]] = {}
    for path in _source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                argument = _message_argument(node, names)
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str) and argument.value:
                    found.setdefault(argument.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def all_messages() -> dict[str, list[str]]:
    """Every message the catalogue must hold: code defaults first, then the literals in the source."""
    from app.i18n import default_messages, error_classes

    messages: dict[str, list[str]] = {}
    for code, text in sorted(default_messages().items()):
        messages.setdefault(text, []).append(f"code {code}")
    for cls in error_classes():  # classes sharing a code keep their own default text
        messages.setdefault(cls.message, []).append(f"class {cls.__name__}")
    for text, where in source_messages().items():
        messages.setdefault(text, []).extend(where)
    return messages


def read_catalogue() -> Catalog:
    with PO.open("rb") as handle:
        return read_po(handle, locale="zh", domain="messages")


def untranslated() -> list[str]:
    catalogue = read_catalogue()
    return [text for text in all_messages() if not (catalogue.get(text) and catalogue.get(text).string)]


def compiled(catalogue: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_mo(buffer, catalogue, use_fuzzy=False)
    return buffer.getvalue()


def extract() -> int:
    catalogue = read_catalogue() if PO.exists() else Catalog(locale="zh", domain="messages")
    added = 0
    for text, where in all_messages().items():
        entry = catalogue.get(text)
        if entry is None:
            catalogue.add(text, string="", auto_comments=where[:3])
            added += 1
        else:
            entry.auto_comments = where[:3]
    catalogue.revision_date = datetime.now(UTC)
    PO.parent.mkdir(parents=True, exist_ok=True)
    with PO.open("wb") as handle:
        write_po(handle, catalogue, width=100, sort_output=False, omit_header=False)
    print(f"{PO.relative_to(ROOT)}: {added} new message(s); translate them, then run compile")
    return 0


def compile_catalogue() -> int:
    MO.write_bytes(compiled(read_catalogue()))
    print(f"wrote {MO.relative_to(ROOT)}")
    return 0


def check() -> int:
    missing = untranslated()
    stale = not MO.exists() or MO.read_bytes() != compiled(read_catalogue())
    for text in missing:
        print(f"untranslated: {text!r}")
    if stale:
        print(f"{MO.relative_to(ROOT)} is not the compiled {PO.name}: run python -m scripts.i18n compile")
    return 1 if missing or stale else 0


def main(argv: list[str]) -> int:
    commands = {"extract": extract, "compile": compile_catalogue, "check": check}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
