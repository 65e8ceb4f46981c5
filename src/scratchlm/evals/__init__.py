"""Measuring what a trained model knows.

``facts``: ask a chat model questions greedily and check that each answer contains the
expected fact (the quality bar of the default run uses it).
"""

from scratchlm.evals.facts import (
    FactQuestion,
    FactReport,
    answer_questions,
    check_facts,
    contains_fact,
    read_fact_questions,
)

__all__ = [
    "FactQuestion",
    "FactReport",
    "answer_questions",
    "check_facts",
    "contains_fact",
    "read_fact_questions",
]
