"""The train/validation split: by whole document, decided by a hash of its content.

Each document's UTF-8 text is hashed with BLAKE2b (8-byte digest, read as a big-endian
integer ``h`` in [0, 2**64)). Then:

- ``val_fraction=f``: the document goes to validation when ``h / 2**64 < f``;
- ``val_docs=N``: validation takes the N documents with the smallest hashes.

The rule looks only at a document's content, so the split is the same on every run and
machine, whatever the order or number of input files, and identical documents always land
on the same side: no text is in both. (Under ``val_docs``, copies of the N-th smallest
document join it, so validation can hold a few more than N documents when the corpus has
duplicates.) The plan is made in a first pass over the corpus, before anything is
encoded; it records which documents (by position) go to validation.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

from tqdm import tqdm

from scratchlm.data.readers import Pieces

HASH_BYTES = 8
SPLIT_RULE = (
    "h = blake2b (8 bytes) of each document's UTF-8 text; validation: h / 2**64 < val_fraction, "
    "or the val_docs smallest h"
)


@dataclass
class SplitPlan:
    """Where every document goes, and what each split will hold."""

    val_positions: list[int] = field(default_factory=list)  # sorted, among all documents
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    chars: int = 0  # characters of all documents (progress of the encoding pass)


def plan_split(
    pieces: Pieces, *, val_fraction: float, val_docs: int | None, progress: bool = False
) -> SplitPlan:
    """Read every document once (as ``(text, end)`` pieces) and decide its split."""
    plan = SplitPlan()
    threshold = val_fraction * 2.0 ** (8 * HASH_BYTES)
    # val_docs: the kept smallest hashes, as a max-heap of negated hashes, and for each
    # the (position, bytes) of its documents. Copies share a hash and stay together.
    heap: list[int] = []
    groups: dict[int, list[tuple[int, int]]] = {}
    kept = 0
    position = 0
    hasher, n_bytes = hashlib.blake2b(digest_size=HASH_BYTES), 0
    bar = tqdm(desc="reading", unit="char", unit_scale=True, disable=not progress, leave=False)
    for text, end in pieces:
        data = text.encode("utf-8")
        hasher.update(data)
        n_bytes += len(data)
        plan.chars += len(text)
        bar.update(len(text))
        if not end:
            continue
        h = int.from_bytes(hasher.digest())
        if val_docs is None:
            split = "val" if h < threshold else "train"
            if split == "val":
                plan.val_positions.append(position)
            plan.documents[split] += 1
            plan.bytes[split] += n_bytes
        else:
            if h not in groups:
                groups[h] = []
                heapq.heappush(heap, -h)
            groups[h].append((position, n_bytes))
            kept += 1
            while kept - len(groups[-heap[0]]) >= val_docs:
                kept -= len(groups.pop(-heapq.heappop(heap)))
            plan.documents["train"] += 1
            plan.bytes["train"] += n_bytes
        position += 1
        hasher, n_bytes = hashlib.blake2b(digest_size=HASH_BYTES), 0
    bar.close()
    if val_docs is not None:
        chosen = sorted(doc for group in groups.values() for doc in group)
        plan.val_positions = [pos for pos, _ in chosen]
        moved = sum(size for _, size in chosen)
        plan.documents["train"] -= len(chosen)
        plan.documents["val"] += len(chosen)
        plan.bytes["train"] -= moved
        plan.bytes["val"] += moved
    return plan
