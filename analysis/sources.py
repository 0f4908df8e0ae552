"""Where an analysis command's data come from; its model: :mod:`upperson.sources`.

Without ``--data-root`` the data are the ToyPEDES test split the embedded model was evaluated on.
"""

from __future__ import annotations

from typing import Optional

from upperson.data import PedesDataset, load_dataset
from upperson.sources import (ModelSource, SourceSpec, find_run_checkpoint, load_source, resolve_checkpoint,
                              zero_shot_of)

__all__ = ["ModelSource", "SourceSpec", "find_run_checkpoint", "load_data", "load_source", "resolve_checkpoint", "zero_shot_of"]


def load_data(data_root: Optional[str] = None, dataset: str = "toypedes", *, check_images: bool = False,
              skip_bad_images: bool = False) -> PedesDataset:
    """The dataset to analyse; without ``data_root``, the embedded model's ToyPEDES."""
    if data_root is None:
        from upperson.embedded import embedded_data_root

        return load_dataset("toypedes", embedded_data_root(splits=["test"]), check_images=check_images,
                            skip_bad_images=skip_bad_images)
    return load_dataset(dataset, data_root, check_images=check_images, skip_bad_images=skip_bad_images)
