"""The Hugging Face contender of the speedrun benchmark (``bench_speedrun.py``, contender c).

    .venv/bin/python bench/speedrun_hf.py --data bench/.data/stdlib10k --budget 900 --out DIR

``transformers.LlamaForCausalLM`` of a preset's shape (``--preset``, default ``mini``;
exported from a freshly initialised scratchlm model, so both start from the same weights),
trained with torch's
``AdamW`` (0.9, 0.95, weight decay 0.1, clip 1.0) in float32 on the same random windows
scratchlm's sampler draws (same seed), for a wall-clock budget. Its learning rate warms up
for 5% of the budget, then follows a cosine to a tenth of the peak, as a function of the
share of the budget spent (generous to it: a step-sized cosine has to guess the step count).
It evaluates on the same fixed validation windows as ``scratchlm train --eval-windows N``
every ``--eval-every`` steps, and stops when the next step and the final evaluation would
no longer fit. ``DIR/metrics.jsonl`` has scratchlm's record shape (``kind`` train or val,
``time`` in seconds since the first step); ``DIR/final.json`` holds the final weights'
loss on ``--final-windows`` windows, measured after the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from scratchlm.config import preset
from scratchlm.data import BatchSampler, fixed_windows, open_tokens, read_meta
from scratchlm.export.hf import to_hf
from scratchlm.model import TransformerLM
from scratchlm.model.loss import bits_per_byte


def val_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Mean next-token loss of ``model`` over the windows x, y (N, T)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(input_ids=x[i : i + batch], use_cache=False).logits  # (b, T, V)
            total += float(
                F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum")
            )
    model.train()
    return total / y.numel()


def lr_at(share: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warmup over ``warmup`` of the budget, then cosine from ``peak`` to peak/10."""
    if share < warmup:
        return peak * share / warmup
    progress = min(1.0, (share - warmup) / (1 - warmup))
    return peak / 10 + (peak - peak / 10) * 0.5 * (1 + math.cos(math.pi * progress))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--budget", type=float, required=True, help="seconds")
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--final-windows", type=int, default=128)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--preset", default="mini", help="the model's shape")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    config = preset(args.preset)
    hf = transformers.LlamaForCausalLM.from_pretrained(
        to_hf(TransformerLM(config), None, out / "init", force=True),
        dtype=torch.float32,
        attn_implementation="sdpa",
    )
    hf.train()
    decay = [q for q in hf.parameters() if q.dim() >= 2]
    rest = [q for q in hf.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    T = config.context_length
    sampler = BatchSampler(open_tokens(args.data, "train"), args.batch_size, T, seed=args.seed)
    val_x, val_y = fixed_windows(open_tokens(args.data, "val"), args.eval_windows, T)
    bytes_per_token = read_meta(args.data)["splits"]["val"]["bytes_per_token"]

    records = (out / "metrics.jsonl").open("w")

    def record(**fields: object) -> None:
        records.write(json.dumps(fields) + "\n")
        records.flush()

    start = time.perf_counter()
    step = 0
    step_time = eval_time = 0.0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed + step_time + eval_time > args.budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(elapsed / args.budget, args.lr)
        began = time.perf_counter()
        x, y = sampler.next("cpu")  # (B, T), (B, T)
        logits = hf(input_ids=x, use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_time = time.perf_counter() - began
        now = time.perf_counter() - start
        if step % 10 == 0:
            record(step=step, tokens=step * x.numel(), time=now, kind="train", loss=float(loss))
        if step % args.eval_every == 0:
            began = time.perf_counter()
            loss_v = val_loss(hf, val_x, val_y, args.batch_size)
            eval_time = time.perf_counter() - began
            t = time.perf_counter() - start
            record(step=step, tokens=step * x.numel(), time=t, kind="val", val_loss=loss_v,
                   val_bpb=bits_per_byte(loss_v, bytes_per_token))  # fmt: skip
    loss_v = val_loss(hf, val_x, val_y, args.batch_size)  # the final evaluation, in budget
    t = time.perf_counter() - start
    record(step=step, tokens=step * args.batch_size * T, time=t, kind="val", val_loss=loss_v,
           val_bpb=bits_per_byte(loss_v, bytes_per_token))  # fmt: skip
    records.close()
    final_x, final_y = fixed_windows(open_tokens(args.data, "val"), args.final_windows, T)
    final = val_loss(hf, final_x, final_y, args.batch_size)
    summary = {"step": step, "val_loss": final, "val_bpb": bits_per_byte(final, bytes_per_token)}
    (out / "final.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
