"""Synthetic data: the PCFG, its task families, and batch samplers (numpy only)."""

from wrapperdist.data.grammar import TERMINALS, Grammar, make_grammar, sample_strings
from wrapperdist.data.sampler import Batch, PCFGTasks, TaskSpec, stream
from wrapperdist.data.tasks import Family, Vocab, labels

__all__ = [
    "TERMINALS", "Batch", "Family", "Grammar", "PCFGTasks", "TaskSpec", "Vocab",
    "labels", "make_grammar", "sample_strings", "stream",
]
