"""What a run says about itself: a normal resume and a requested stop are plain
progress (INFO), not warnings; warnings are kept for real trouble."""

from __future__ import annotations

import logging

from scratchlm.train.trainer import Trainer


def test_a_resume_is_logged_as_info_not_a_warning(tiny_config, caplog):
    config = tiny_config.replace(steps=2, warmup_steps=1, eval_every=0, checkpoint_every=2)
    Trainer(config).run()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="scratchlm"):
        result = Trainer(config.replace(steps=4, resume=True)).run()
    assert result.step == 4
    resumed = [r for r in caplog.records if "resumed from step_00000002" in r.getMessage()]
    assert [r.levelno for r in resumed] == [logging.INFO]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
