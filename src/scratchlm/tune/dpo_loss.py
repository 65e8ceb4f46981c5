r"""The DPO loss written out (Rafailov et al. 2023, "Direct Preference Optimization").

For a prompt x with a chosen answer y_w and a rejected one y_l, the policy pi (the model
being tuned) and the frozen reference pi_ref (the model it started as) give each answer
an implicit reward, beta times how much more likely the policy makes it than the
reference did::

    r(y) = beta * (log pi(y | x) - log pi_ref(y | x))

where log pi(y | x) sums the log-probabilities of the answer's tokens only. DPO
maximises the probability that the chosen answer wins under a Bradley-Terry model of
these rewards, with no reward model and no sampling::

    loss = -log sigmoid(r(y_w) - r(y_l))                                   (sigmoid)

IPO (Azar et al. 2023) regresses the gap of the length-normalised log-ratios to
1 / (2 beta) instead, which does not push it to infinity on data it already separates::

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) / |y_w| - (log pi(y_l|x) - log pi_ref(y_l|x)) / |y_l|
    loss = (h - 1 / (2 beta))^2                                            (ipo)

(the per-token average, as TRL computes it). The logged ``accuracy`` is the share of
pairs whose chosen reward exceeds the rejected one; ``margins`` r(y_w) - r(y_l);
``nll_chosen`` the chosen answers' negative log-likelihood per token (the SFT loss below).

Both losses only rank the answers: the chosen answer's own probability may fall as long
as the rejected one falls faster, and with it the answers SFT taught. An SFT loss on the
chosen answers beside it keeps them likely (Pang et al. 2024, "Iterative Reasoning
Preference Optimization"; TRL's ``rpo_alpha``, or its ``"sft"`` loss type)::

    loss = loss_dpo + sft_weight * NLL(y_w | x) / |y_w|

where the NLL is summed over the batch's chosen answers and divided by their tokens (a
mean over tokens, as TRL computes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.loss import IGNORE_INDEX


def sequence_logps(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row sum of log softmax(logits)[target] over the targets that are not -100,
    and the number of such targets: logits (N, L, V), targets (N, L) -> (N,), (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, L, V), in float32
    keep = targets != IGNORE_INDEX  # (N, L)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (N, L)
    return (picked * keep).sum(-1), keep.sum(-1)


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Each pair's loss and the chosen and rejected rewards (all (B,); the rewards
    detached), from the summed answer log-probabilities (B,) of the policy and the
    reference. IPO needs each answer's token count (B,)."""
    chosen_ratio = chosen_logps - ref_chosen_logps  # (B,)
    rejected_ratio = rejected_logps - ref_rejected_logps  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        assert chosen_tokens is not None and rejected_tokens is not None, "ipo: token counts"
        gap = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(
            min=1
        )
        losses = (gap - 1 / (2 * beta)) ** 2
    else:
        raise AssertionError(f"unknown DPO loss {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_metrics(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor
) -> dict[str, Tensor]:
    """Metrics of a batch of pairs, each summed over the pairs (B,) -> 0-dim: the mean
    is the sum over the count of pairs."""
    return {
        "rewards_chosen": chosen_rewards.sum(),
        "rewards_rejected": rejected_rewards.sum(),
        "margins": (chosen_rewards - rejected_rewards).sum(),
        "accuracy": (chosen_rewards > rejected_rewards).float().sum(),
    }


class DPOLoss(nn.Module):
    """The training computation of preference tuning as a ``forward`` (what DDP and
    torch.compile wrap): a batch of pairs -> the summed loss and metrics."""

    def __init__(
        self, model: nn.Module, *, beta: float, loss_type: str = "sigmoid", sft_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.model = model
        self.beta = beta
        self.loss_type = loss_type
        self.sft_weight = sft_weight

    def forward(self, x: Tensor, y: Tensor, ref: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x, y (2B, L): the B chosen answers, then the B rejected ones (targets -100 but
        on the answers); ref (2B,) the reference's log-probabilities of them. Returns
        the loss summed over the B pairs and ``pair_metrics`` with ``nll_chosen``."""
        logps, tokens = sequence_logps(self.model(x), y)  # (2B,), (2B,)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss_type=self.loss_type,
            chosen_tokens=chosen_tokens,
            rejected_tokens=rejected_tokens,
        )
        # The mean NLL over the batch's chosen tokens, counted once per pair: the Trainer
        # divides the step's sums by its pairs, which leaves TRL's mean.
        nll = len(chosen) * -chosen.sum() / chosen_tokens.sum().clamp(min=1)
        metrics = pair_metrics(losses.detach(), chosen_rewards, rejected_rewards)
        metrics["nll_chosen"] = nll.detach()
        loss = losses.sum()
        if self.sft_weight:
            loss = loss + self.sft_weight * nll
        return loss, metrics
