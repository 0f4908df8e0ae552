"""UP-Person: unified parameter-efficient transfer learning for text-based person retrieval."""

__version__ = "0.1.0"
