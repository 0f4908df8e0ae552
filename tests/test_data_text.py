"""Caption tokenizer and the BERT-style caption masking."""

from __future__ import annotations

import pytest
import torch

from upperson.data import MASK_TOKEN_ID, build_tokenizer, mask_caption_tokens


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("ViT-B-16")


def test_tokenizer_ids_and_shape(tok):
    assert (tok.context_length, tok.sot_id, tok.eot_id, tok.vocab_size) == (77, 49406, 49407, 49408)
    out = tok(["a man in a red coat", "hi"])
    assert out.shape == (2, 77) and out.dtype == torch.long
    assert out[0, 0] == tok.sot_id
    # "a man in a red coat" is 6 BPE tokens: <end> at position 7, padding after
    assert out[0, 7] == tok.eot_id and (out[0, 8:] == 0).all()
    assert tok.decode(out[0]) == "a man in a red coat"
    assert tok("one caption").shape == (1, 77)


def test_truncation_keeps_end_token(tok):
    long_caption = " ".join(f"word{i}" for i in range(200))
    out = tok([long_caption, "short one"])
    assert out[0, -1] == tok.eot_id  # last slot is <end>, not a word piece
    assert (out[0] != 0).all()
    assert (out[0, :-1] != tok.eot_id).all()
    assert out.argmax(-1).tolist() == [76, 3]  # argmax pooling finds <end> in both rows


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="no-such-model"):
        build_tokenizer("no-such-model")


def _batch(tok):
    caps = ["the woman wears a white shirt and black trousers with a pink handbag " * k for k in (1, 2, 4, 9)]
    return tok(caps)


def test_mask_never_touches_specials_and_stays_below_end(tok):
    tokens = _batch(tok)
    gen = torch.Generator().manual_seed(0)
    out = mask_caption_tokens(tokens, 0.5, gen, vocab_size=tok.vocab_size, mask_token_id=tok.mask_token_id)
    assert out.shape == tokens.shape and out is not tokens
    special = (tokens == 0) | (tokens == tok.sot_id) | (tokens == tok.eot_id)
    assert torch.equal(out[special], tokens[special])
    body = ~special
    assert (out[body] >= 1).all() and (out[body] < tok.sot_id).all()
    assert torch.equal(out.argmax(-1), tokens.argmax(-1))
    assert (out != tokens).any()


def test_mask_proportions(tok):
    tokens = _batch(tok).repeat(200, 1)
    body = (tokens != 0) & (tokens != tok.sot_id) & (tokens != tok.eot_id)
    gen = torch.Generator().manual_seed(1)
    out = mask_caption_tokens(tokens, 0.15, gen, vocab_size=tok.vocab_size, mask_token_id=MASK_TOKEN_ID)
    n = body.sum().item()
    masked = ((out == MASK_TOKEN_ID) & body).sum().item() / n
    changed_other = ((out != tokens) & (out != MASK_TOKEN_ID) & body).sum().item() / n
    # expected: 0.15 * 0.8 = 0.12 masked; 0.15 * 0.1 = 0.015 random (a random draw equal to the
    # original token is negligible); n is about 85,000 tokens so 4 sigma is < 0.005
    assert abs(masked - 0.12) < 0.005, masked
    assert abs(changed_other - 0.015) < 0.002, changed_other


def test_mask_deterministic_and_1d(tok):
    tokens = _batch(tok)
    a = mask_caption_tokens(tokens, 0.3, torch.Generator().manual_seed(7), vocab_size=49408, mask_token_id=MASK_TOKEN_ID)
    b = mask_caption_tokens(tokens, 0.3, torch.Generator().manual_seed(7), vocab_size=49408, mask_token_id=MASK_TOKEN_ID)
    c = mask_caption_tokens(tokens, 0.3, torch.Generator().manual_seed(8), vocab_size=49408, mask_token_id=MASK_TOKEN_ID)
    assert torch.equal(a, b) and not torch.equal(a, c)
    one = mask_caption_tokens(tokens[2], 1.0, torch.Generator().manual_seed(0), vocab_size=49408, mask_token_id=MASK_TOKEN_ID)
    assert one.shape == (77,)
    assert torch.equal(mask_caption_tokens(tokens, 0.0, torch.Generator(), vocab_size=49408, mask_token_id=MASK_TOKEN_ID), tokens)


def test_random_tokens_skip_start(tok):
    # a tiny vocabulary: random draws must cover 1..high-1 except <start>, never <end> or more
    tokens = torch.tensor([[8, 1, 2, 3, 4, 5, 6, 9, 0]]).repeat(4000, 1)  # <start>=8, <end>=9
    out = mask_caption_tokens(tokens, 1.0, torch.Generator().manual_seed(0), vocab_size=10, mask_token_id=7)
    drawn = set(out[:, 1:7].unique().tolist())
    assert drawn == {1, 2, 3, 4, 5, 6, 7}
    assert torch.equal(out[:, [0, 7, 8]], tokens[:, [0, 7, 8]])


def test_mask_rejects_bad_arguments(tok):
    tokens = _batch(tok)
    with pytest.raises(ValueError, match="probability"):
        mask_caption_tokens(tokens, 1.5, torch.Generator(), vocab_size=49408, mask_token_id=MASK_TOKEN_ID)
    with pytest.raises(ValueError, match="mask token id 49407"):
        mask_caption_tokens(tokens, 0.1, torch.Generator(), vocab_size=49408, mask_token_id=49407)


def test_truncate_is_the_text_the_model_reads(tok):
    import open_clip

    bpe = open_clip.get_tokenizer("ViT-B-16")  # the reference: open_clip's own tokenizer
    limit = tok.context_length - 2
    short = "a man in a red coat"
    assert tok.truncate(short) == (short, len(bpe.encode(short)))
    long_caption = " ".join(["a woman in a long blue coat with a black backpack"] * 12)
    ids = bpe.encode(long_caption)
    assert len(ids) > limit
    kept, count = tok.truncate(long_caption)
    assert count == len(ids)
    assert kept == bpe.decode(ids[:limit]).strip() and long_caption.startswith(kept)
    # the kept text is exactly what the model sees of the long one: the same token row
    assert torch.equal(tok(kept), tok(long_caption))
