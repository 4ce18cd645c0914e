"""The embedded world: the course makes its own data, so every stage has answers a program can check.

    corpus       World (people, pets, colours, foods, towns; what is held out) and the pretraining text
    tasks        instruction tasks in 10 families, train / val / test splits with unseen test cases
    judge        is a response right, and is it in the preferred style? per-family accuracy tables
    preferences  (prompt, chosen, rejected) pairs from a hidden rule, with optional label noise
    command      `python -m gpt_scratch data`: writes all of it as files in common formats

    from gpt_scratch.world import build_world, generate_corpus, make_tasks, score
    world = build_world(seed=0)
    splits = make_tasks(world, seed=0)
"""

from gpt_scratch.world.corpus import World, build_world, generate_corpus
from gpt_scratch.world.judge import (extract_answer, format_table, is_correct, majority_baseline, normalise, score,
                                    style_of)
from gpt_scratch.world.preferences import make_preference_pairs, preference_rank
from gpt_scratch.world.tasks import FAMILIES, family_counts, format_family_counts, make_tasks

__all__ = ["World", "build_world", "generate_corpus", "extract_answer", "format_table", "is_correct", "majority_baseline", "normalise",
           "score", "style_of", "make_preference_pairs", "preference_rank", "FAMILIES", "family_counts",
           "format_family_counts", "make_tasks"]
