"""The model scorer on tiny local models, loaded through the production loading code."""

from __future__ import annotations

import math

import pytest
import torch
from framefleet.scoring import create_scorer, overall_score
from framefleet.scoring.models import (
    AestheticHead,
    aesthetic_to_100,
    clip_score_to_100,
    load_aesthetic_head,
    pickscore_to_100,
)
from framefleet.scoring.weights import ModelSources, WeightsMissing, check_sources
from PIL import Image

from tests.tiny_models import build_tiny_models

WEIGHTS = {"pickscore": 0.5, "clip_score": 0.25, "aesthetic": 0.25}
LAION_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> ModelSources:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def scorer(sources):
    return create_scorer("models", sources=sources, device="cpu")


def images(n=4):
    out = []
    for i in range(n):
        image = Image.new("RGB", (64, 40), (40 * i, 120, 220 - 40 * i))
        image.paste((250, 250 - 50 * i, 0), (8 * i, 4, 20 + 8 * i, 30))
        out.append(image)
    return out


def test_mapping_curves():
    assert pickscore_to_100(21) == pytest.approx(50)
    assert pickscore_to_100(18) < 15 and pickscore_to_100(24) > 85
    assert clip_score_to_100(0.2) == pytest.approx(50) and clip_score_to_100(0.5) == 100
    assert clip_score_to_100(-0.3) == 0
    assert aesthetic_to_100(1) == 0 and aesthetic_to_100(10) == 100 and aesthetic_to_100(5.5) == pytest.approx(50)
    assert aesthetic_to_100(12) == 100


def test_pickscore_matches_a_direct_computation(scorer, sources):
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(sources.pickscore_model).eval()
    processor = AutoProcessor.from_pretrained(sources.pickscore_processor)
    prompt, batch = "a lighthouse at dusk", images()
    with torch.no_grad():
        img = model.get_image_features(**processor(images=batch, return_tensors="pt"))
        txt = model.get_text_features(**processor(text=[prompt], return_tensors="pt"))
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    cos = torch.nn.functional.cosine_similarity(img, txt)
    raw = (model.logit_scale.exp() * cos).tolist()
    results = scorer.score(prompt, batch)
    for result, expected in zip(results, raw):
        assert result.pickscore_raw == pytest.approx(expected, abs=1e-4)
        assert result.pickscore == pytest.approx(100 / (1 + math.exp(-(expected - 21) / 1.5)), abs=1e-3)


def test_clip_score_and_aesthetic_match_a_direct_computation(scorer, sources):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("framefleet-tiny-clip",
                                                                 pretrained=sources.clip_pretrained)
    model.eval()
    head = AestheticHead(16)
    head.load_state_dict(torch.load(sources.aesthetic_weights))
    head.eval()
    prompt, batch = "a lighthouse at dusk", images()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in batch]))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = model.encode_text(open_clip.get_tokenizer("framefleet-tiny-clip")([prompt]))
        txt = txt / txt.norm(dim=-1, keepdim=True)
        ratings = head(img).squeeze(-1).tolist()
    cosines = (img @ txt.T).squeeze(-1).tolist()
    for result, cos, rating in zip(scorer.score(prompt, batch), cosines, ratings):
        assert result.clip_score == pytest.approx(100 * min(1, 2.5 * max(cos, 0)), abs=1e-3)
        assert result.aesthetic == pytest.approx(min(100, max(0, (rating - 1) / 9 * 100)), abs=1e-3)


def test_aesthetic_head_loads_laion_keys_and_refuses_others(sources, tmp_path):
    state = torch.load(sources.aesthetic_weights)
    assert set(state) == LAION_KEYS
    head = load_aesthetic_head(sources.aesthetic_weights, "cpu")
    assert head.layers[0].in_features == 16 and not head.training
    renamed = {k.replace("layers.", "mlp."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "bad.pth")
    with pytest.raises(KeyError):
        load_aesthetic_head(str(tmp_path / "bad.pth"), "cpu")


def test_batch_and_one_by_one_agree(scorer):
    prompt, batch = "a red kite over the sea", images()
    together = scorer.score(prompt, batch, [batch[0]])
    for image, joint in zip(batch, together):
        (alone,) = scorer.score(prompt, [image], [batch[0]])
        for metric in ("pickscore_raw", "clip_score", "aesthetic"):
            assert getattr(alone, metric) == pytest.approx(getattr(joint, metric), abs=1e-4)
        assert alone.consistency[0] == pytest.approx(joint.consistency[0], abs=1e-4)


def test_prompts_are_truncated_to_77_tokens(scorer):
    long_prompt = " ".join(["lighthouse"] * 120)
    batch = images(2)
    base = scorer.score(long_prompt, batch)
    longer = scorer.score(long_prompt + " and a completely different ending", batch)
    for a, b in zip(base, longer):
        assert a.pickscore_raw == pytest.approx(b.pickscore_raw, abs=1e-5)
        assert a.clip_score == pytest.approx(b.clip_score, abs=1e-5)


def test_consistency_is_cosine_to_each_input(scorer):
    batch = images(2)
    results = scorer.score("x", batch, [batch[0], batch[1]])
    assert results[0].consistency[0] == pytest.approx(1.0, abs=1e-4)
    assert results[1].consistency[1] == pytest.approx(1.0, abs=1e-4)
    assert scorer.score("x", batch)[0].consistency is None


def test_one_metric_failing_keeps_the_others_and_reweights(scorer, monkeypatch):
    def broken(*_):
        raise RuntimeError("PickScore model exploded")

    monkeypatch.setattr(scorer, "pickscore_raw", broken)
    (result,) = scorer.score("a prompt", images(1))
    assert result.pickscore is None and "exploded" in result.errors["pickscore"]
    assert result.clip_score is not None and result.aesthetic is not None
    assert overall_score(result, WEIGHTS) == pytest.approx((0.25 * result.clip_score + 0.25 * result.aesthetic) / 0.5,
                                                           abs=1e-3)


def test_missing_weights_are_reported_per_model_and_never_downloaded(tmp_path, sources):
    missing = sources.model_copy(update={"aesthetic_weights": str(tmp_path / "none.pth"),
                                         "pickscore_model": "nobody/not-in-cache"})
    report = check_sources(missing)
    assert report["aesthetic_weights"].startswith("missing: aesthetic_weights")
    assert report["pickscore_model"].startswith("missing: pickscore_model")
    assert not report["clip"].startswith("missing")
    with pytest.raises(WeightsMissing, match="pickscore_model"):
        create_scorer("models", sources=missing, device="cpu")
    url_only = sources.model_copy(update={"aesthetic_weights": "https://example.invalid/w.pth",
                                          "cache_dir": str(tmp_path)})
    assert check_sources(url_only)["aesthetic_weights"].startswith("missing: aesthetic_weights: https://")
