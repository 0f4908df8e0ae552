"""Training, resuming and model selection."""

from upperson.train.loop import TrainingDiverged, selection_split, train

__all__ = ["TrainingDiverged", "selection_split", "train"]
