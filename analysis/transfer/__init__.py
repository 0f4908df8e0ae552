"""``python -m analysis transfer``: the domain-generalization protocol (docs/transfer.md).

Train on a source domain, select on its val split, evaluate on every target's test split, for
UP-Person, the full fine-tune and zero-shot: the matrix with intervals, the paired difference
UP-Person - full fine-tune per cell, and the in-domain against cross-domain gap.
"""
