"""One model resolver (upperson.sources): the zero-shot counterpart shares the backbone and equals the file's."""

from __future__ import annotations

import pytest
import torch

from upperson.data import build_tokenizer
from upperson.embedded import load_embedded_model
from upperson.sources import SourceSpec, load_source, zero_shot_of


@pytest.fixture(scope="module")
def model():
    return load_embedded_model("upperson").eval()


def _features(m, images, tokens):
    with torch.no_grad():
        return m.encode_image(images), m.encode_text(tokens)


def test_zero_shot_shares_the_backbone_and_equals_the_backbone_read_from_file(model):
    zs = zero_shot_of(model)
    ref = load_embedded_model("zero-shot").eval()  # the frozen backbone built from its file
    assert set(zs.state_dict()) == set(ref.state_dict())  # no component left
    own = dict(model.named_parameters())
    for name, p in zs.named_parameters():  # the same storage: no second backbone in memory
        assert p.data_ptr() == own[name].data_ptr() and not p.requires_grad, name
    assert zs.backbone_fingerprint == model.backbone_fingerprint == ref.backbone_fingerprint
    torch.manual_seed(0)
    images = torch.randn(3, 3, *model.image_size)
    tokens = build_tokenizer(model.config.name)(["a man in a red coat", "a woman with a black bag", "x"])
    for got, want in zip(_features(zs, images, tokens), _features(ref, images, tokens)):
        assert torch.equal(got, want)  # bit for bit
    assert not torch.equal(_features(model, images, tokens)[0], _features(zs, images, tokens)[0])


def test_load_source_spec_and_arguments_are_one_resolver(model):
    zs = load_source(SourceSpec(zero_shot=True))
    assert zs.label == "embedded zero-shot" and zs.checkpoint is None
    assert load_source(variant="zero-shot").label == "embedded zero-shot"
    assert load_source().label == "embedded upperson"
    with pytest.raises(ValueError, match="not both"):
        SourceSpec(checkpoint="a", run="b")
    with pytest.raises(TypeError):
        load_source(SourceSpec(), pretrained="x")
