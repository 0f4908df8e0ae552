"""Training, resuming and model selection.

The names below are imported lazily, so that :mod:`upperson.train.rundir` (the run folder's
rules) can be used without importing torch.
"""

from typing import Any

__all__ = ["TrainingDiverged", "TrainingInterrupted", "selection_split", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from upperson.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'upperson.train' has no attribute {name!r}")
