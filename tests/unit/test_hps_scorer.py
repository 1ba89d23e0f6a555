"""HPSv2.1 in the model scorer, on a tiny open_clip model saved in HPS's checkpoint format, loaded
through the production loading code."""

from __future__ import annotations

import json
import math

import pytest
import torch
from framefleet.scoring import create_scorer, overall_score
from framefleet.scoring.models import hps_to_100
from framefleet.scoring.weights import check_sources, missing_models
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from tests.tiny_models import OPEN_CLIP_CONFIG, build_tiny_models

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny-hps"))


@pytest.fixture(scope="module")
def scorer(sources):
    return create_scorer("models", sources=sources, device="cpu", with_hps=True)


def images():
    out = []
    for i in range(3):  # not square: HPS fits the longest side and pads, it does not crop
        image = Image.new("RGB", (80, 36), (60 * i, 100, 200 - 50 * i))
        image.paste((250, 240 - 60 * i, 10), (10 * i, 4, 30 + 10 * i, 30))
        out.append(image)
    return out


def hps_preprocess(image: Image.Image, size: int = 32) -> torch.Tensor:
    """HPS's own evaluation transform, written out: the longest side to ``size``, zero padding."""
    tensor = F.to_tensor(image)
    height, width = tensor.shape[1:]
    scale = size / max(height, width)
    new = [round(height * scale), round(width * scale)]
    tensor = F.resize(tensor, new, InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new[0], size - new[1]
    tensor = F.pad(tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(tensor, OPENAI_MEAN, OPENAI_STD)


def test_mapping_curve():
    assert hps_to_100(0.30) == pytest.approx(50)
    assert hps_to_100(0.26) == pytest.approx(100 / (1 + math.exp(2)))
    assert hps_to_100(0.34) > 85 and hps_to_100(0.20) < 1


def test_hps_is_the_cosine_of_the_checkpoints_towers_with_hps_preprocessing(scorer, sources):
    import open_clip

    model = open_clip.create_model("framefleet-tiny-hps")
    model.load_state_dict(torch.load(sources.hps_weights)["state_dict"])
    model.eval()
    prompt, batch = "a lighthouse at dusk", images()
    with torch.no_grad():
        img = model.encode_image(torch.stack([hps_preprocess(i) for i in batch]))
        txt = model.encode_text(open_clip.get_tokenizer("framefleet-tiny-hps")([prompt]))
    cosines = torch.nn.functional.cosine_similarity(img, txt).tolist()
    for result, cosine in zip(scorer.score(prompt, batch), cosines, strict=True):
        assert result.hps_raw == pytest.approx(cosine, abs=0.005)  # bicubic on PIL vs on a tensor: a little
        assert result.hps == pytest.approx(hps_to_100(result.hps_raw), abs=1e-3)
    assert len({round(r.hps_raw, 4) for r in scorer.score(prompt, batch)}) == 3


def test_hps_counts_only_where_weighted_and_only_where_loaded(scorer, sources):
    (result,) = scorer.score("a red kite", images()[:1])
    weights = {"pickscore": 0.5, "clip_score": 0.25, "aesthetic": 0.25}
    assert overall_score(result, weights) != overall_score(result, {**weights, "hps": 1.0})
    without = create_scorer("models", sources=sources, device="cpu")
    assert without.score("a red kite", images()[:1])[0].hps is None


def test_a_checkpoint_of_another_architecture_is_refused(sources, tmp_path):
    other = tmp_path / "framefleet-tiny-hps-narrow.json"
    other.write_text(json.dumps({**OPEN_CLIP_CONFIG, "embed_dim": 8}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_scorer("models", sources=sources.model_copy(update={"hps_model": str(other)}), device="cpu",
                      with_hps=True)


def test_missing_hps_weights_matter_only_when_hps_is_used(sources, tmp_path):
    missing = sources.model_copy(update={"hps_weights": str(tmp_path / "none.pt")})
    report = check_sources(missing)
    assert report["hps_weights"].startswith("missing: hps_weights")
    assert missing_models(report, with_hps=False) == {}
    assert set(missing_models(report, with_hps=True)) == {"hps_weights"}
    assert check_sources(sources)["hps_weights"] == sources.hps_weights
