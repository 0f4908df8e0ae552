"""Caption tokenisation and the BERT-style caption augmentation (docs/method.md)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import open_clip
import torch

#: The mask token of the caption augmentation. The reference code (IRRA's tokenizer, reused
#: by UP-Person) turns the last BPE merge of CLIP's vocabulary, ``"jekyll</w>"`` (id 49405),
#: into ``<|mask|>`` so that the vocabulary keeps its 49,408 entries. We use the same slot:
#: a rare token, below ``<start>`` (49406) and ``<end>`` (49407), so the text feature's
#: ``argmax`` pooling still finds ``<end>``.
MASK_TOKEN_ID = 49405


class CaptionTokenizer:
    """open_clip's tokenizer for a model, returning ``(N, context_length)`` LongTensors.

    Over-long captions are truncated and their last token is set to ``<end>`` (what
    open_clip does), so ``tokens.argmax(-1)`` is always the ``<end>`` position.
    """

    def __init__(self, model_name: str):
        from upperson.model.backbone import register_model_configs

        register_model_configs()  # the project's own configs (upp-tiny) use CLIP's tokenizer
        if not model_name.startswith(("hf-hub:", "local-dir:")) and open_clip.get_model_config(model_name) is None:
            # open_clip would fall back to the CLIP tokenizer with only a warning
            raise ValueError(f"unknown open_clip model {model_name!r}: no tokenizer for it")
        try:
            tok = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # unknown model, missing HF tokenizer offline, ...
            raise ValueError(f"cannot build the tokenizer of model {model_name!r}: {exc}") from exc
        for attr in ("sot_token_id", "eot_token_id", "context_length"):
            if getattr(tok, attr, None) is None:
                raise ValueError(
                    f"model {model_name!r} uses tokenizer {type(tok).__name__} without {attr}; "
                    "only CLIP-style BPE tokenizers (<start> ... <end>, argmax pooling) are supported"
                )
        self.model_name = model_name
        self._tok = tok
        self.context_length: int = int(tok.context_length)
        self.sot_id: int = int(tok.sot_token_id)
        self.eot_id: int = int(tok.eot_token_id)
        self.vocab_size: int = int(getattr(tok, "vocab_size", self.eot_id + 1))
        if self.eot_id != self.vocab_size - 1 or self.sot_id >= self.eot_id:
            raise ValueError(
                f"model {model_name!r}: tokenizer has <start>={self.sot_id}, <end>={self.eot_id}, "
                f"vocabulary {self.vocab_size}; argmax pooling needs <end> to be the largest id"
            )
        #: the mask id for :func:`mask_caption_tokens` (CLIP's vocabulary: 49405)
        self.mask_token_id: int = MASK_TOKEN_ID if self.vocab_size == 49408 else self.sot_id - 1

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return self._tok(texts, context_length=self.context_length)

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of one row of tokens, without padding, ``<start>`` and ``<end>``."""
        ids = [int(t) for t in tokens.tolist() if int(t) not in (0, self.sot_id, self.eot_id)]
        return self._tok.decode(ids).strip()

    def truncate(self, text: str) -> tuple[str, Optional[int]]:
        """(the part of ``text`` the model reads, the length of ``text`` in tokens).

        The model reads the first ``context_length - 2`` BPE tokens (``<start>`` and ``<end>``
        take the other two): those decoded back to text, or ``text`` itself when it fits. The
        count excludes ``<start>``/``<end>``; it is None, and ``text`` comes back unchanged, for
        a tokenizer without a BPE ``encode``.
        """
        encode = getattr(self._tok, "encode", None)
        if encode is None:
            return text, None
        ids = encode(text)
        limit = self.context_length - 2
        if len(ids) <= limit:
            return text, len(ids)
        return self._tok.decode(ids[:limit]).strip(), len(ids)

    def __repr__(self) -> str:
        return f"CaptionTokenizer({self.model_name!r}, context_length={self.context_length})"


def build_tokenizer(model_name: str) -> CaptionTokenizer:
    """The caption tokenizer of open_clip model ``model_name`` (works offline for CLIP BPE)."""
    return CaptionTokenizer(model_name)


def mask_caption_tokens(
    tokens: torch.Tensor,
    prob: float,
    generator: torch.Generator,
    *,
    vocab_size: int,
    mask_token_id: int,
    sot_id: Optional[int] = None,
    eot_id: Optional[int] = None,
) -> torch.LongTensor:
    """BERT-style caption augmentation (docs/method.md), as the reference code does it.

    Each caption token strictly between ``<start>`` (position 0) and ``<end>`` is chosen
    with probability ``prob`` (0.15 in the reference); a chosen token becomes
    ``mask_token_id`` with probability 0.8, a random token with 0.1, and stays with 0.1.
    ``<start>``, ``<end>`` and padding (0) are never touched. Random tokens are drawn
    uniformly from ``1 .. min(vocab_size, <end>) - 1`` without ``<start>``, so no token id
    reaches ``<end>`` and argmax pooling is unchanged. ``<end>`` of each row is its largest
    id (CLIP's vocabulary) unless ``eot_id`` is given; ``<start>`` is the row's first token
    unless ``sot_id`` is given. ``tokens`` is ``(L,)`` or ``(N, L)``; a new tensor is
    returned. (Unlike the reference, a caption where no token was drawn is left as it is
    rather than having its first word masked.)
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"caption mask probability must be in [0, 1], got {prob}")
    squeeze = tokens.dim() == 1
    t = tokens.clone().long()
    if squeeze:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"tokens must be (L,) or (N, L), got shape {tuple(tokens.shape)}")
    if prob == 0.0 or t.numel() == 0:
        return t.squeeze(0) if squeeze else t

    n, length = t.shape
    if eot_id is None:
        eot_pos = t.argmax(dim=1)
        eot_ids = t.gather(1, eot_pos[:, None]).squeeze(1)
    else:
        is_eot = t == eot_id
        eot_pos = torch.where(is_eot.any(1), is_eot.float().argmax(1), torch.zeros_like(t[:, 0]))
        eot_ids = torch.full((n,), eot_id, dtype=torch.long)
    sot_ids = {int(x) for x in (t[:, 0] if sot_id is None else torch.tensor([sot_id]))}
    high = min(int(vocab_size), int(eot_ids.min()))  # random ids are < high
    if not 0 < mask_token_id < high:
        raise ValueError(f"mask token id {mask_token_id} must be in 1..{high - 1} (below <end> and the vocabulary)")

    pos = torch.arange(length)
    maskable = (pos[None, :] >= 1) & (pos[None, :] < eot_pos[:, None]) & (t != 0)
    u = torch.rand(t.shape, generator=generator)
    chosen = maskable & (u < prob)
    v = u / prob  # uniform in [0, 1) given chosen
    to_mask = chosen & (v < 0.8)
    to_random = chosen & (v >= 0.8) & (v < 0.9)

    specials = sorted(s for s in sot_ids if 1 <= s < high)
    r = torch.randint(1, high - len(specials), t.shape, generator=generator)
    for s in specials:  # skip over the special ids: values >= s shift up by one
        r = r + (r >= s).long()
    t = torch.where(to_mask, torch.full_like(t, mask_token_id), t)
    t = torch.where(to_random, r, t)
    return t.squeeze(0) if squeeze else t
