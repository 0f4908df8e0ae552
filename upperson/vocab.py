"""The training vocabulary of a checkpoint: the words of the captions it was trained on.

Stored beside the weights as the format-3 sidecar ``vocab.json`` (its SHA-256 is bound into the
weights' header, see :func:`upperson.model.checkpoint.save_petl`), so the demo can say when a
query is mostly made of words the model never saw (another language, nonsense, rare words).
A checkpoint without one (older checkpoints) simply has no vocabulary: nothing is guessed.

A word is a run of letters (any script), lower-cased: ``"T-shirt"`` is ``t`` and ``shirt``;
digits and punctuation are not words. Text without spaces (Chinese) is one long word, which is
unknown to an English vocabulary, as it should be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from upperson.io import atomic_write_text, file_digest

VOCAB_NAME = "vocab.json"
FORMAT = "upperson-vocabulary"
VERSION = 1
#: a query with fewer than this fraction of its words in the vocabulary gets a notice
KNOWN_THRESHOLD = 0.5

_WORD = re.compile(r"[^\W\d_]+")


class VocabularyError(ValueError):
    """A ``vocab.json`` that is not a vocabulary."""


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters, lower-cased."""
    return [w.lower() for w in _WORD.findall(text or "")]


@dataclass(frozen=True)
class Vocabulary:
    """The words of the training captions, and how many captions they came from."""

    words: frozenset[str]
    captions: int

    def coverage(self, text: str) -> tuple[int, int]:
        """(known words, words) of ``text``, counting repeats."""
        ws = words(text)
        return sum(w in self.words for w in ws), len(ws)


def build_vocabulary(captions: Iterable[str]) -> Vocabulary:
    """The vocabulary of ``captions``."""
    seen: set[str] = set()
    n = 0
    for c in captions:
        seen.update(words(c))
        n += 1
    return Vocabulary(frozenset(seen), n)


def write_vocabulary(vocab: Vocabulary, path: Union[str, Path]) -> Path:
    """Write ``vocab`` as JSON (sorted words: the same captions give the same bytes), atomically."""
    body = {"format": FORMAT, "version": VERSION, "captions": vocab.captions, "words": sorted(vocab.words)}
    atomic_write_text(path, json.dumps(body, ensure_ascii=False, indent=0) + "\n")
    return Path(path)


def read_vocabulary(path: Union[str, Path]) -> Vocabulary:
    """A vocabulary written by :func:`write_vocabulary`; VocabularyError for anything else."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"{path}: not a readable vocabulary ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("words"), list) \
            or not all(isinstance(w, str) for w in body["words"]) or not isinstance(body.get("captions"), int):
        raise VocabularyError(f"{path}: not an UP-Person vocabulary (format {FORMAT!r}, a list of words)")
    return Vocabulary(frozenset(body["words"]), body["captions"])


def checkpoint_vocabulary(folder: Union[str, Path]) -> Optional[Vocabulary]:
    """The vocabulary stored with the checkpoint in ``folder``, or None when it has none.

    Only a ``vocab.json`` listed in the checkpoint's ``petl.json`` counts, and only with the SHA-256
    listed there (VocabularyError otherwise); a stray file beside it is ignored.
    """
    config = Path(folder) / "petl.json"
    try:
        listed = (json.loads(config.read_text(encoding="utf-8")).get("files") or {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(listed, dict) or VOCAB_NAME not in listed:
        return None
    path = Path(folder) / VOCAB_NAME
    try:
        actual = file_digest(path)
    except OSError as exc:
        raise VocabularyError(f"{path}: listed in {config.name} but unreadable ({type(exc).__name__})") from None
    if actual != listed[VOCAB_NAME]:
        raise VocabularyError(f"{path} was changed: its sha256 is {actual[:12]}..., {config.name} records "
                              f"{str(listed[VOCAB_NAME])[:12]}...; restore it")
    return read_vocabulary(path)
