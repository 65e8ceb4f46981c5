"""Instruction-tuning benchmark: packed rows beside padded rows, one optimizer step each.

    .venv/bin/python bench/bench_sft.py [--quick] [--rounds N] [--block N] [--budget S]
                                        [--threads N] [--markdown PATH] [--json PATH]

Both sides train on the built-in conversations (``builtin:chat``, the training part of
the trainer's split), rendered with a chat tokenizer built on a BPE of vocab 1,024
trained on the built-in corpus, as the default pipeline does:

- padded: one conversation per row, the batch cut to its longest conversation (how
  instruction tuning batched before packing; built here from ``conversation_rows``);
- packed: rows of ``T`` tokens holding whole conversations, kept apart by segment ids
  (``sft_data.pack_examples`` and the trainer's ``ConversationSampler``).

A step is what the trainer does with a batch: fused forward + loss, backward, clip the
gradient to 1.0, AdamW (``build_optimizer``), zero_grad, the loss read on the host. Each
configuration runs in one fresh process (``harness.measure_torch``, 2 threads), the two
sides alternating in blocks of steps (padded first in even rounds, packed first in odd
ones), each with its own copy of the same initial weights; a configuration stops after
the round that passes ``--budget`` seconds (at least 2 rounds), so a loaded machine does
not stretch the run past ~3 minutes. Useful tokens are the tokens of conversations
(prompt or answer, not padding); loss tokens those with a target.

Prints one table per configuration and a summary; writes every step's numbers as JSON
(default ``bench/results/sft.json``) and, with ``--markdown``, the tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    BENCH,
    Report,
    Run,
    Table,
    cores,
    load_average,
    measure_torch,
    package_version,
    ratio,
)

VOCAB = 1024
SEED = 1337
SIDES = ("padded", "packed")


def configurations() -> dict[str, dict]:
    """name -> model preset, overrides, context length and batch size (rows)."""
    from scratchlm.pipeline import DefaultRun

    run = DefaultRun()
    return {
        "default run": {
            "preset": "tiny",
            "model": dict(run.model),
            "context_length": run.context_length,
            "batch_size": run.batch_size,
        },
        "small": {"preset": "small", "model": {}, "context_length": 256, "batch_size": 8},
    }


# --------------------------------------------------------------------------------------
# The child task: runs in a fresh process, returns a JSON-ready dict
# --------------------------------------------------------------------------------------


def sft_speed(
    preset: str,
    model: dict,
    context_length: int,
    batch_size: int,
    rounds: int,
    block: int,
    warmup: int,
    budget_s: float,
) -> dict:
    """Padded and packed steps of one configuration, alternating in blocks of ``block``
    timed steps for ``rounds`` rounds (fewer, but at least 2, once ``budget_s`` seconds
    have passed) after ``warmup`` untimed steps each."""
    import copy

    import torch

    from scratchlm.builtin import END_OF_TEXT, builtin_chat, builtin_corpus
    from scratchlm.chat_format import chat_tokenizer
    from scratchlm.config import preset as model_preset
    from scratchlm.data.batches import RankedDraws
    from scratchlm.data.chat_sources import read_conversations
    from scratchlm.model import TransformerLM
    from scratchlm.tokenizer import BPETokenizer, train_bpe
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.config_files import SFT_DEFAULTS
    from scratchlm.train.optim import build_optimizer, clip_grad_norm
    from scratchlm.train.sft_data import (
        PAD_SEGMENT,
        ConversationSampler,
        conversation_rows,
        pack_examples,
        render_examples,
        split_conversations,
    )

    T, B = context_length, batch_size
    vocab, merges = train_bpe(builtin_corpus(), VOCAB, [END_OF_TEXT])
    tok = chat_tokenizer(BPETokenizer(vocab, merges, [END_OF_TEXT]))
    conversations, _ = read_conversations([str(builtin_chat())], skip_bad=False)
    train, _ = split_conversations(conversations, TrainConfig().val_fraction)

    class PaddedSampler(RankedDraws):
        """One conversation per row, the batch cut to its longest conversation."""

        def __init__(self) -> None:
            super().__init__(B, seed=SEED)
            self.x, self.y, self.lengths = conversation_rows(train, tok, T)

        def next(self) -> tuple[tuple, int]:
            rows = self.draw(len(self.x))  # (B,)
            width = int(self.lengths[rows].max())
            useful = int(self.lengths[rows].sum())
            return (self.x[rows, :width], self.y[rows, :width]), useful

    class PackedSampler:
        """The trainer's sampler; useful tokens are those outside the padding segment."""

        def __init__(self) -> None:
            rows = pack_examples(render_examples(train, tok, T), T, seed=SEED)
            self.sampler = ConversationSampler(rows, B, seed=SEED)
            self.rows = rows

        def next(self) -> tuple[tuple, int]:
            batch = self.sampler.next("cpu")  # x, y, segment_ids (B, L)
            return batch, int((batch[2] != PAD_SEGMENT).sum())

    samplers = {"padded": PaddedSampler(), "packed": PackedSampler()}
    torch.manual_seed(SEED)
    config = model_preset(preset, **model, context_length=T, vocab_size=tok.vocab_size)
    base = TransformerLM(config).train()
    sides: dict[str, dict] = {}
    for name in SIDES:
        net = copy.deepcopy(base)
        optimizer = build_optimizer(net, TrainConfig(lr=SFT_DEFAULTS["lr"]))
        sides[name] = {"model": net, "optimizer": optimizer, "sampler": samplers[name]}
        sides[name].update(step_s=[], useful=[], loss_tokens=[], computed=[], blocks=[])

    def step(side: dict) -> tuple[float, int, int, int]:
        start = time.perf_counter()
        batch, useful = side["sampler"].next()
        loss = side["model"].loss(*batch)
        loss.backward()
        clip_grad_norm(side["model"].parameters(), 1.0)
        side["optimizer"].step()
        side["optimizer"].zero_grad(set_to_none=True)
        value = float(loss)  # syncs, as the trainer's read of the loss does
        seconds = time.perf_counter() - start
        assert math.isfinite(value), f"the loss is {value}"
        return seconds, useful, int((batch[1] != -100).sum()), batch[0].numel()

    for side in sides.values():
        for _ in range(warmup):
            step(side)
    started = time.perf_counter()
    for r in range(rounds):
        if r >= 2 and time.perf_counter() - started > budget_s:
            break
        for name in SIDES if r % 2 == 0 else SIDES[::-1]:
            side = sides[name]
            block_s, block_useful, block_loss = 0.0, 0, 0
            for _ in range(block):
                seconds, useful, loss_tokens, computed = step(side)
                side["step_s"].append(seconds)
                side["useful"].append(useful)
                side["loss_tokens"].append(loss_tokens)
                side["computed"].append(computed)
                block_s, block_useful = block_s + seconds, block_useful + useful
                block_loss += loss_tokens
            side["blocks"].append({"s": block_s, "useful": block_useful, "loss": block_loss})

    packed_rows = samplers["packed"].rows
    keep = ("step_s", "useful", "loss_tokens", "computed", "blocks")
    return {
        "sides": {name: {k: side[k] for k in keep} for name, side in sides.items()},
        "parameters": sum(p.numel() for p in base.parameters()),
        "vocab_size": tok.vocab_size,
        "conversations": len(train),
        "rounds": len(sides["packed"]["blocks"]),
        "packed_rows": len(packed_rows.x),
        "packed_fill": float(packed_rows.lengths.sum()) / packed_rows.x.numel(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _ratios(result: dict) -> dict:
    """Packed / padded useful tokens per second in each round: their median and range."""
    packed, padded = (result["sides"][side]["blocks"] for side in ("packed", "padded"))
    per_round = [
        (p["useful"] / p["s"]) / (q["useful"] / q["s"]) for p, q in zip(packed, padded, strict=True)
    ]
    return {"median": statistics.median(per_round), "range": (min(per_round), max(per_round))}


def summarize(result: dict) -> dict[str, dict]:
    """Per side: median ms/step, mean useful / loss / computed tokens per step, the
    median over blocks of useful and loss tokens per second; and the packed / padded
    ratio of useful tokens per second."""
    out = {}
    for name, side in result["sides"].items():
        blocks = side["blocks"]
        out[name] = {
            "ms": 1e3 * statistics.median(side["step_s"]),
            "ms_range": (1e3 * min(side["step_s"]), 1e3 * max(side["step_s"])),
            "useful": statistics.mean(side["useful"]),
            "loss_tokens": statistics.mean(side["loss_tokens"]),
            "computed": statistics.mean(side["computed"]),
            "useful_per_s": statistics.median(b["useful"] / b["s"] for b in blocks),
            "loss_per_s": statistics.median(b["loss"] / b["s"] for b in blocks),
        }
    out["ratio"] = _ratios(result)
    return out


def _ratio_cell(r: dict) -> str:
    return f"{ratio(r['median'])} ({'-'.join(ratio(x) for x in r['range'])})"


def config_table(name: str, setting: dict, run: Run, args: argparse.Namespace) -> Table:
    T, B = setting["context_length"], setting["batch_size"]
    title = f"{name}: batch {B} rows x {T} tokens, fp32, {args.threads} threads"
    headers = ["batching", "ms/step (median)", "min-max ms", "tokens/step",
               "padding", "useful tokens/step", "loss tokens/step", "useful tokens/s",
               "loss tokens/s", "packed / padded"]  # fmt: skip
    table = Table(title, headers)
    if run.error:
        table.notes.append(f"failed: {run.error}")
        return table
    s = summarize(run.result)
    for side in SIDES:
        v = s[side]
        table.rows.append([
            side, f"{v['ms']:,.0f}", f"{v['ms_range'][0]:,.0f}-{v['ms_range'][1]:,.0f}",
            f"{v['computed']:,.0f}",
            f"{1 - v['useful'] / v['computed']:.0%}", f"{v['useful']:,.0f}",
            f"{v['loss_tokens']:,.0f}", f"{v['useful_per_s']:,.0f}", f"{v['loss_per_s']:,.0f}",
            "(reference)" if side == "padded" else _ratio_cell(s["ratio"]),
        ])  # fmt: skip
    r = run.result
    model = f" with {setting['model']}" if setting["model"] else ""
    table.notes += [
        f"model: preset {setting['preset']}{model}, context {T}, vocab {r['vocab_size']:,} "
        f"(BPE {VOCAB} + chat tokens), {r['parameters'] / 1e6:.1f}M parameters; "
        f"{r['conversations']} training conversations",
        f"packed: {r['packed_rows']} rows of {T}, {r['packed_fill']:.1%} of their tokens "
        "used (best fit in a random order); padded: each batch cut to its longest "
        "conversation; tokens/step = B x the batch's width, the tokens computed",
        f"{r['rounds']} rounds x {args.block} timed step(s) per side after {args.warmup} "
        "warm-up steps; useful and loss tokens/s = median over rounds of (tokens / wall "
        "seconds); packed / padded = median (min-max) of that ratio per round",
    ]
    return table


def machine_table(args: argparse.Namespace) -> Table:
    table = Table("Machine", ["fact", "value"])
    table.rows += [
        ["cores", cores()],
        ["load average at start", load_average()],
        ["python", platform.python_version()],
        ["torch", package_version("torch")],
        ["torch threads", f"{args.threads} (torch.set_num_threads, OMP_NUM_THREADS)"],
        ["date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
    ]
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 step: a smoke run")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 24)")
    p.add_argument("--block", type=int, help="timed steps per side per round (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--budget", type=float, default=60, help="seconds of rounds per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", type=Path, help="also write the tables here as Markdown")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "sft.json")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 24)
    args.block = args.block or 1
    if min(args.rounds, args.block) < 1 or args.warmup < 0:
        p.error("--rounds and --block must be at least 1, --warmup at least 0")

    report = Report()
    report.show(machine_table(args))
    runs: dict[str, Run] = {}
    settings = configurations()
    for name, setting in settings.items():
        runs[name] = measure_torch(
            sft_speed, threads=args.threads, timeout=600, rounds=args.rounds,
            block=args.block, warmup=args.warmup, budget_s=args.budget, **setting,
        )  # fmt: skip
        report.show(config_table(name, setting, runs[name], args))

    summary = Table(
        "Packed / padded, useful tokens/s", ["configuration", "median of rounds (min-max)"]
    )
    for name, run in runs.items():
        if not run.error:
            summary.rows.append([name, _ratio_cell(summarize(run.result)["ratio"])])
    report.show(summary)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    saved = {name: {"setting": settings[name], "error": run.error, **run.result}
             for name, run in runs.items()}  # fmt: skip
    args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json),
                         "markdown": str(args.markdown)}, "runs": saved}, indent=1))  # fmt: skip
    print(f"json written to {args.json}")
    quick = " (--quick: few steps, not for docs)" if args.quick else ""
    report.finish(f"Instruction tuning: packing or padding{quick}", args.markdown)


if __name__ == "__main__":
    main()
