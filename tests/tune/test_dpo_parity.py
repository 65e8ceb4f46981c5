"""Parity with TRL: on the same tiny model (ours, exported to a Hugging Face Llama) and
the same pairs, TRL's DPOTrainer renders the same token ids, computes the same reference
log-probabilities, and the same loss and gradients as ours, for the sigmoid and IPO
losses and for the sigmoid loss with an SFT loss on the chosen answers (TRL's "sft" loss
type beside it, weighted as its rpo_alpha)."""

from __future__ import annotations

import copy

import pytest
import torch
from dpo_helpers import CONTEXT, TINY

pytest.importorskip("trl")  # the tune extra
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from scratchlm.builtin import END_OF_TEXT  # noqa: E402
from scratchlm.config import preset  # noqa: E402
from scratchlm.export import to_hf  # noqa: E402
from scratchlm.export.hf_llama import key_map  # noqa: E402
from scratchlm.model import TransformerLM  # noqa: E402
from scratchlm.tune.dpo_data import batch_of, pair_rows, preference_pair  # noqa: E402
from scratchlm.tune.dpo_loss import DPOLoss  # noqa: E402
from scratchlm.tune.reference import reference_logps  # noqa: E402

pytestmark = pytest.mark.slow
TOL = 1e-4


def _records():
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    said = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return [
        {"prompt": user("Why is the sky blue?"), "chosen": said("Air scatters blue light."),
         "rejected": said("Because it is painted.")},
        {"prompt": [{"role": "system", "content": "Be brief."}, *user("What is ice?")],
         "chosen": said("Frozen water."), "rejected": said("Hot rock, I think, maybe so.")},
        {"prompt": [*user("Hi"), *said("Hello."), *user("What makes wind?")],
         "chosen": said("Moving air."), "rejected": said("Trees waving.")},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "loss_type, sft_weight", [("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", 0.5)]
)
def test_loss_and_gradients_equal_trl_dpo_trainer(
    tmp_path, chat_tok, loss_type, sft_weight, one_thread
):
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    config = preset("tiny", vocab_size=chat_tok.vocab_size, context_length=CONTEXT, **TINY)
    reference = TransformerLM(config)
    policy = copy.deepcopy(reference)  # a policy that moved away from the reference
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = {}
    for name, model in (("reference", reference), ("policy", policy)):
        folder = to_hf(model, chat_tok, tmp_path / name)
        hf[name] = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "policy")
    # TRL adds an SFT loss on the chosen answers as a second loss type with its weight.
    losses = {"loss_type": [loss_type, "sft"], "loss_weights": [1.0, sft_weight]}
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), beta=0.1, report_to=[],
        **(losses if sft_weight else {"loss_type": [loss_type]}),
        use_cpu=True, pad_token=END_OF_TEXT, max_length=None, dataset_num_proc=None,
    )  # fmt: skip
    records = _records()
    trainer = DPOTrainer(
        model=hf["policy"],
        ref_model=hf["reference"],
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=hf_tok,
    )
    examples = [trainer.train_dataset[i] for i in range(len(records))]
    inputs = trainer.data_collator(examples)

    # The same token ids, and the answer tokens where TRL's completion mask is.
    rows, too_long = pair_rows([preference_pair(r) for r in records], chat_tok, CONTEXT)
    assert too_long == 0
    for i, example in enumerate(examples):
        for j, answer in enumerate(("chosen_ids", "rejected_ids")):
            ids = example["prompt_ids"] + example[answer]
            n = len(ids) - 1
            assert rows.x[i, j, :n].tolist() == ids[:-1]
            answer_targets = rows.y[i, j, :n][rows.y[i, j, :n] != -100].tolist()
            assert answer_targets == example[answer]

    # The same log-probabilities of each answer, up to TRL's tiled "fused LM head"
    # (which never holds all logits): within a few 1e-3 over a whole answer.
    ours = reference_logps(reference, rows, batch_size=2)  # (N, 2)
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(hf["reference"], inputs)
    trl_ref = torch.stack([trl_chosen, trl_rejected], dim=1)  # (N, 2)
    torch.testing.assert_close(ours, trl_ref, atol=1e-2, rtol=0)

    # The same loss (TRL's mean over pairs; ours the sum over them) and gradients.
    hf["policy"].train()
    trl_loss = trainer.compute_loss(hf["policy"], inputs)
    trl_loss.backward()
    # Given the same reference log-probabilities (TRL's own): the same loss and gradients.
    rows.ref = trl_ref
    ours, _ = DPOLoss(policy, beta=0.1, loss_type=loss_type, sft_weight=sft_weight)(
        *batch_of(rows, torch.arange(3))
    )
    (ours / 3).backward()
    assert abs(float(ours / 3) - float(trl_loss)) < TOL
    assert float(trl_loss) > 0.01  # the models differ: a loss far from its minimum
    theirs = dict(hf["policy"].named_parameters())
    compared = 0
    mine = dict(policy.named_parameters())
    for mapping in key_map(config):
        grad = torch.cat([mine[name].grad for name in mapping.ours])
        grad = grad.T if mapping.transposed else grad
        torch.testing.assert_close(grad, theirs[mapping.hf].grad, atol=TOL, rtol=0)
        compared += len(mapping.ours)
    assert compared == len(list(policy.parameters()))
