"""The contenders of the CPU speedrun (``bench_speedrun.py``): each a name, what it is,
the ``scratchlm train`` flags it adds to the ones every contender gets, and its preset."""

from __future__ import annotations

from dataclasses import dataclass

WAVE1_STEPS_PER_MINUTE = 30  # 450 steps in the reference's 15 minutes

# The defaults before mini tied its embeddings and zero-initialised its projections
# (2026-12-06): the contenders measured on them keep them, so each recorded number can be
# reproduced with today's code.
BEFORE_TIED = "--model tie_embeddings=false --model zero_init_proj=false"
# (name, what, flags) of each contender measured on b-prev: depth at mini's width (the
# size search only varied the width), the recipe's choices and the architecture options.
ON_PREV = (
    ("b-l6", "with 6 layers", "--model n_layers=6"),
    ("b-l8", "with 8 layers", "--model n_layers=8"),
    ("b-fp32", "in float32", "--precision fp32"),
    ("b-adamw", "with AdamW (lr 1e-3)", "--optimizer adamw --lr 1e-3"),
    ("b-accum1", "with 8 x 256 tokens per step", "--grad-accum 1"),
    (
        "b-relu2",
        "+ ReLU^2 MLP (d_ff 528: SwiGLU 352's parameters)",
        "--model ffn=relu2 --model d_ff=528",
    ),
    ("b-qknorm", "+ QK-norm", "--model qk_norm=true"),
    ("b-softcap", "+ logit soft-capping at 15", "--model logit_softcap=15"),
)

# What the new defaults amount to for this data, spelled out (the bench passes none of it
# to contender b: `scratchlm train --data D --time-budget Nm` is the recipe).
RECIPE = (
    "preset mini (tied embeddings, zero-initialised output projections), "
    "bf16 autocast (--precision auto on a CPU with AVX512-BF16/AMX), "
    "--optimizer muon (--muon-lr 0.02 for the hidden matrices, AdamW at --lr 1e-3 for the "
    "rest; Newton-Schulz in bf16), "
    "--schedule wsd (warmup 5%, decay from 80% of the budget), 2 x 8 x 256 tokens per step"
)


@dataclass
class Contender:
    name: str
    what: str
    flags: str = ""  # scratchlm train flags, besides the ones every contender gets
    timed: bool = True  # --time-budget MINUTESm (else sized in steps by its flags)
    hf: bool = False  # speedrun_hf.py instead of scratchlm train
    minutes: float | None = None  # its own budget; None: --budget
    preset: str = "mini"  # the model's shape


def contenders(budget: float) -> list[Contender]:
    """Every contender for a budget of ``budget`` minutes."""
    steps = round(WAVE1_STEPS_PER_MINUTE * budget)
    wave1 = (
        f"--steps {steps} --precision fp32 --optimizer adamw --lr 1e-3 --schedule cosine "
        "--grad-accum 1 --eval-every 25 --checkpoint-every 150"
    )
    return [
        Contender(
            "a",
            f"wave-1: fp32, AdamW, cosine over {steps} steps",
            wave1,
            False,
            preset="small",
        ),
        Contender("b", "new default (--time-budget)"),
        Contender("c", "HF LlamaForCausalLM, fp32, torch AdamW, cosine in time", hf=True),
        Contender("b5", "new default, 5-minute budget", minutes=5),
        Contender("b10", "new default, 10-minute budget", minutes=10),
        # The default before tied embeddings and zero-initialised projections won their
        # ablations (below), and each of the two undone from today's default.
        Contender("b-prev", "the defaults before tying (untied, normal init)", BEFORE_TIED),
        Contender("b-untied", "new default with untied embeddings", "--model tie_embeddings=false"),
        Contender(
            "b-normal-init",
            "new default, output projections initialised as the rest",
            "--model zero_init_proj=false",
        ),
        # The same recipe on small (the 2026-12-05/06 default) and the ablations, measured
        # on small before mini was chosen; each names its shape.
        Contender("b-small", "new default", preset="small"),
        Contender(
            "c-small",
            "HF LlamaForCausalLM, fp32, torch AdamW, cosine in time",
            hf=True,
            preset="small",
        ),
        Contender("b5-small", "new default, 5-minute budget", minutes=5, preset="small"),
        Contender("b10-small", "new default, 10-minute budget", minutes=10, preset="small"),
        Contender("b-small-fp32", "new default in float32", "--precision fp32", preset="small"),
        Contender(
            "b-small-adamw",
            "new default with AdamW (lr 1e-3)",
            "--optimizer adamw --lr 1e-3",
            preset="small",
        ),
        Contender(
            "b-small-lr3e-3",
            "new default, AdamW parameters at lr 3e-3",
            "--lr 3e-3",
            preset="small",
        ),
        Contender(
            "b-small-accum1",
            "new default, 8 x 256 tokens per step",
            "--grad-accum 1",
            preset="small",
        ),
        Contender(
            "b-small-nostable",
            "new default, no stable phase (linear decay right after warmup)",
            "--decay-start 0.05",
            preset="small",
        ),
        Contender(
            "b-small-decay60",
            "new default, decay from 60% of the budget",
            "--decay-start 0.6",
            preset="small",
        ),
        Contender(
            "b-small-min0", "new default, learning rates decay to 0", "--min-lr 0", preset="small"
        ),
        Contender(
            "b-d384",
            "new default, a smaller model: d_model 384, 12 heads, d_ff 1024",
            "--model d_model=384 --model n_heads=12 --model d_ff=1024",
            preset="small",
        ),
        Contender(
            "b-d320",
            "new default, d_model 320, 10 heads, d_ff 864",
            "--model d_model=320 --model n_heads=10 --model d_ff=864",
            preset="small",
        ),
        Contender(
            "b-d256",
            "new default, d_model 256, 8 heads, d_ff 704",
            "--model d_model=256 --model n_heads=8 --model d_ff=704",
            preset="small",
        ),
        Contender(
            "b-d192",
            "new default, d_model 192, 6 heads, d_ff 512",
            "--model d_model=192 --model n_heads=6 --model d_ff=512",
            preset="small",
        ),
        Contender(
            "b-d128",
            "new default, d_model 128, 4 heads, d_ff 352",
            "--model d_model=128 --model n_heads=4 --model d_ff=352",
            preset="small",
        ),
        Contender(
            "b-d256-l6",
            "new default, d_model 256, 8 heads, d_ff 704, 6 layers",
            "--model d_model=256 --model n_heads=8 --model d_ff=704 --model n_layers=6",
            preset="small",
        ),
        Contender(
            "b-d384-l6",
            "new default, d_model 384, 12 heads, d_ff 1024, 6 layers",
            "--model d_model=384 --model n_heads=12 --model d_ff=1024 --model n_layers=6",
            preset="small",
        ),
        # Measured on the defaults before tying (b-prev), each with one change.
        *(
            Contender(name, f"b-prev {what}", f"{BEFORE_TIED} {flags}")
            for name, what, flags in ON_PREV
        ),
    ]
