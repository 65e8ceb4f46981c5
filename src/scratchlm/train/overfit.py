"""Overfitting, said once: a run whose validation loss has risen well above its best.

A small corpus trained on for many epochs is memorised: the training loss keeps falling
while the validation loss, after its lowest point, climbs. The final checkpoint is then
worse on new text than an earlier one, and nothing in the numbers a user watches (the
training loss) says so. ``overfit_warning`` is the one line that does; the trainer shows
it the first time an evaluation crosses the bar.
"""

from __future__ import annotations

from pathlib import Path

# How far above its best the validation loss must rise, as a share of the best, before
# the run is called overfitting: well beyond the noise of an evaluation on a few windows.
RISE = 0.1


def overfit_warning(
    step: int, val_loss: float, best_val: float | None, best_checkpoint: Path | None
) -> str | None:
    """The warning for a validation loss of ``val_loss`` at ``step`` when the run's best
    so far is ``best_val``, saved in ``best_checkpoint`` (a ``step_...`` directory);
    None while the loss stays within ``RISE`` of its best (or there is no best yet)."""
    if best_val is None or best_checkpoint is None or not val_loss > best_val * (1 + RISE):
        return None
    best_step = int(best_checkpoint.name.removeprefix("step_"))
    return (
        f"overfitting: validation loss {val_loss:.3f} at step {step} is well above "
        f"its best, {best_val:.3f} at step {best_step}: the model is memorising its training "
        "data. Train fewer steps, on more data, or with dropout (pretraining: --model "
        f"dropout=0.1) or more --weight-decay, or start from the best checkpoint: {best_checkpoint}"
    )
