"""What a run tells its user and its log: the opening line, the periodic training
metrics, and each evaluation (validation loss, samples).

Functions of the ``Trainer`` (passed as ``trainer``): they read its settings, model,
state and run log, and change nothing the training steps depend on.
"""

from __future__ import annotations

import logging
from typing import Any

from scratchlm.train.evaluate import draw_samples
from scratchlm.train.overfit import overfit_warning
from scratchlm.train.progress import mfu, peak_memory_bytes
from scratchlm.train.runtime import autocast, cpu_flags, precision_advice

log = logging.getLogger("scratchlm.train.trainer")  # the trainer's logger: one stream


def announce(trainer: Any) -> None:
    """The run's opening line: the model's size, where and how it trains, for how long."""
    t = trainer
    if not t.dist.is_main:
        return
    m = t.model
    length = f"{t.total} steps of {t.tokens_per_step:,} tokens"
    if t.budget:  # its step count is unknown
        length = (
            f"steps of {t.tokens_per_step:,} tokens for {t.config.time_budget} "
            f"({t.budget.seconds:g} s)"
        )
    size = f"{m.num_parameters() / 1e6:.2f}M"
    what = f"{size} parameters"
    if t.config.lora:  # the rest is frozen
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        what = f"{trainable:,} LoRA parameters of a frozen {size} model"
    t.echo(
        f"training {what} on {t.device} "
        f"({t.precision}, {t.dist.world_size} process(es)): {length}, from step {t.state.step}"
    )
    advice = precision_advice(t.config.precision, t.precision, t.device, cpu_flags())
    for note in (advice, t.optimizer_note):
        if note:
            t.echo(note)


def log_train(trainer: Any, bar: Any, loss: float, grad_norm: float, lr: float, tps: float) -> None:
    """Record the training metrics of the step just taken (and show them on the bar)."""
    t = trainer
    util = mfu(tps / t.dist.world_size, t.flops_per_token, t.peak)
    bar.update(t.state.step, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_s=tps, mfu=util)
    t.run_log.record(
        kind="train",
        loss=loss,
        lr=lr,
        grad_norm=grad_norm,
        tokens_per_s=tps,
        mfu=util,
        peak_memory_bytes=peak_memory_bytes(t.device),
        **{name: float(value) for name, value in t.step_metrics.items()},
    )
    if not t.run_log.bar_enabled and t.dist.is_main:
        total = "?" if t.budget else t.total
        log.info("step %d/%s loss %.4f lr %.2e", t.state.step, total, loss, lr)


def evaluate_run(trainer: Any, bar: Any) -> float | None:
    """Evaluate on the validation rows, record the result and a few samples; returns
    the validation loss (None on the processes that do not evaluate)."""
    t = trainer
    c = t.config
    if not (t.dist.is_main or c.fsdp):  # a sharded model evaluates on every process
        return None
    result = t.objective.evaluate(
        t.model,
        t.data,
        batch_size=c.batch_size,
        autocast=autocast(t.device, t.precision),
        loss_fn=t.loss_module if c.fsdp else None,
    )
    if not t.dist.is_main:
        return None
    t.state.last_val = result["val_loss"]
    if t.state.best_val is None or t.state.last_val < t.state.best_val:
        t.state.best_val = t.state.last_val
    t.run_log.record(kind="val", **result)
    more = f", {result['val_bpb']:.3f} bits/byte" if "val_bpb" in result else ""
    if "val_accuracy" in result:  # preference pairs
        more += f", preference accuracy {result['val_accuracy']:.1%}"
    t.run_log.say(bar, f"step {t.state.step}: validation loss {t.state.last_val:.4f}{more}")
    warn_if_overfitting(t)
    texts = []  # none from a sharded model: generation would need every shard
    if not c.fsdp:
        prompts, n = t.prompts, c.sample_tokens
        chat = c.phase != "pretrain"
        texts = draw_samples(
            t.model, t.tokenizer, prompts, max_new_tokens=n, seed=c.seed, chat=chat
        )
    for prompt, text in zip(t.prompts[: len(texts)], texts, strict=True):
        t.run_log.record(kind="sample", prompt=prompt, text=text)
        shown = text if c.phase != "pretrain" else prompt + text  # an answer, or a continuation
        t.run_log.say(bar, f"  {prompt!r} -> {shown[:120]!r}")
    return t.state.last_val


def warn_if_overfitting(trainer: Any) -> None:
    """Say once (per process) that the validation loss rose well above its best."""
    t = trainer
    if t.overfit_warned:
        return
    warning = overfit_warning(
        t.state.step, t.state.last_val, t.checkpoints.best_val_loss(), t.checkpoints.best()
    )
    if warning is not None:
        t.overfit_warned = True
        t.run_log.event(warning)  # a WARNING on the console, and in metrics.jsonl
