"""The small built-in data the default run trains on, written by the scratchlm team.

``science.txt``: short texts on how everyday science works (weather, water, plants, the
sky, the body, physics at home, animals), documents separated by ``<|endoftext|>``.

``chat.jsonl``: instruction-tuning conversations about the facts of ``science.txt``, one
``{"messages": [{"role": ..., "content": ...}, ...]}`` object per line (roles ``system``,
``user``, ``assistant``), plus a little small talk and polite refusals of questions outside
everyday science. Most answers are taught with ten or more differently worded questions:
a small model learns to answer a question it has never seen in those words only when
it has seen one answer follow many wordings.

``chat_eval.jsonl`` and ``chat_heldout.jsonl``: quality checks for a chat model, one
``{"question": ..., "expect": [...], "source": ...}`` object per line. The eval questions
appear verbatim in ``chat.jsonl``; the held-out ones are new wordings of facts it teaches
(no question of ``chat.jsonl`` shares 80% of its words with one of them).
A good answer contains every ``expect`` word (case-insensitive).

``builtin:python`` is not a file of this package: it names every ``.py`` file of the
running interpreter's standard library, a larger corpus for the tokenizer and ``prepare``.
"""

import os
import sysconfig
from importlib.resources import as_file, files
from pathlib import Path

from scratchlm.errors import DataError

END_OF_TEXT = "<|endoftext|>"


# Names that stand for the files of this package wherever a file is expected.
BUILTIN_FILES = {
    "builtin:science": "science.txt",
    "builtin:chat": "chat.jsonl",
    "builtin:chat_eval": "chat_eval.jsonl",
    "builtin:chat_heldout": "chat_heldout.jsonl",
    "builtin:preferences": "preferences.jsonl",
    "builtin:preferences_heldout": "preferences_heldout.jsonl",
}
# Names that stand for a whole corpus wherever an input is expected.
BUILTIN_INPUTS = ("builtin:science", "builtin:python")


def resolve_builtin(name: str | os.PathLike) -> Path:
    """The file a built-in name (``BUILTIN_FILES``) stands for, a real file inside the
    installed package; any other name as a Path."""
    file = BUILTIN_FILES.get(os.fspath(name))
    if file is None:
        return Path(name)
    with as_file(files(__package__) / file) as path:
        return Path(path)


def builtin_corpus() -> Path:
    """Path of the built-in pretraining corpus (``science.txt``)."""
    return resolve_builtin("builtin:science")


def builtin_chat() -> Path:
    """Path of the built-in instruction-tuning conversations (``chat.jsonl``)."""
    return resolve_builtin("builtin:chat")


def builtin_chat_eval() -> Path:
    """Path of the built-in eval questions taken verbatim from ``chat.jsonl``."""
    return resolve_builtin("builtin:chat_eval")


def builtin_chat_heldout() -> Path:
    """Path of the built-in held-out questions: new wordings of facts ``chat.jsonl`` teaches."""
    return resolve_builtin("builtin:chat_heldout")


def stdlib_python_files() -> list[Path]:
    """Every ``.py`` file of this interpreter's standard library, sorted by path, without
    site-packages (installed third-party code is not the standard library)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages")]
        found.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return sorted(p for p in found if p.is_file())


def builtin_files(name: str) -> list[Path]:
    """The files of a built-in input (``builtin:science`` or ``builtin:python``)."""
    if name == "builtin:science":
        return [builtin_corpus()]
    if name == "builtin:python":
        return stdlib_python_files()
    raise DataError(f"unknown input {name!r}: the built-in inputs are {BUILTIN_INPUTS}")
