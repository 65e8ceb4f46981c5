"""The small built-in data the default run trains on, written by the scratchlm team.

``science.txt``: short texts on how everyday science works (weather, water, plants, the
sky, the body, physics at home, animals), documents separated by ``<|endoftext|>``.
"""

from importlib.resources import as_file, files
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"


def builtin_corpus() -> Path:
    """Path of the built-in pretraining corpus (a real file inside the installed package)."""
    with as_file(files(__package__) / "science.txt") as path:
        return Path(path)
