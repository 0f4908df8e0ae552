"""UP-Person: unified parameter-efficient transfer learning for text-based person retrieval.

``upperson.build_model(cfg.model)`` is the single entry point to the model; ``load_config``
reads presets and YAML files. Both are imported lazily, so ``python -m upperson --help`` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["build_model", "load_config", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from upperson.model import build_model

        return build_model
    if name == "load_config":
        from upperson.config import load_config

        return load_config
    raise AttributeError(f"module 'upperson' has no attribute {name!r}")
