"""Shared settings and helpers of the preference-tuning tests."""

from __future__ import annotations

import json
from pathlib import Path

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}
CONTEXT = 64

# Preference pairs with an easy pattern to learn: the chosen answer is short, the
# rejected one the same answer padded with filler.
QUESTIONS = {
    "What color is the sky?": "Blue.",
    "How many legs does a spider have?": "Eight.",
    "What do plants need?": "Light and water.",
    "What is ice?": "Frozen water.",
    "Where does rain come from?": "Clouds.",
    "What makes wind?": "Moving air.",
    "What is the Sun?": "A star.",
    "What do bees make?": "Honey.",
    "What is snow?": "Ice crystals.",
    "What do fish breathe with?": "Gills.",
    "What pulls things down?": "Gravity.",
    "What is fog?": "A low cloud.",
}


def write_pairs(path: Path, questions: dict[str, str] = QUESTIONS) -> Path:
    """A preference file: each question, its answer chosen, the padded answer rejected."""
    with path.open("w") as f:
        for question, answer in questions.items():
            rambling = f"Well, let me think. {answer} Or so I have heard, more or less."
            f.write(json.dumps({"prompt": question, "chosen": answer, "rejected": rambling}) + "\n")
    return path
