"""The model scorer: PickScore, CLIP-Score, LAION aesthetic, input-image consistency and, when
asked for, HPSv2.1.

Mappings to 0-100 (README, "Scoring"):
- PickScore: raw = logit_scale · cos(text, image) (typically 18-24), mapped by an absolute
  logistic curve 100 / (1 + exp(-(raw - 21) / 1.5)): 18 → 12, 21 → 50, 24 → 88. It does not
  depend on the other candidates, so four bad images stay bad (no softmax).
- CLIP-Score (Hessel et al. 2021, capped): 100 · min(1, 2.5 · max(cos, 0)) with open_clip.
- Aesthetic: the LAION improved aesthetic MLP on the same L2-normalised image embedding as
  CLIP-Score; its 1-10 output is mapped linearly to 0-100 and clamped.
- Consistency: cos(candidate embedding, input image embedding) per input image.
- HPSv2.1: cos(image, text) of its fine-tuned open_clip ViT-H-14 (no logit scale, as its authors
  score; their benchmark reports 100 · cos: 25.4 for SD 1.4 up to 31.3 for SDXL), mapped by the
  logistic 100 / (1 + exp(-(100 · cos - 30) / 2)): 26 → 12, 30 → 50, 34 → 88. Its own towers:
  HPS fine-tuned the last 20 image layers, so PickScore's image embedding cannot stand in.
Models run in half precision on a GPU; normalisation and dot products are done in float32.
"""

from __future__ import annotations

import logging
import math

import torch
from framefleet.scoring.types import MetricScores, ScoreGroup
from framefleet.scoring.weights import (
    ModelSources,
    clip_model_name,
    resolve_file,
    resolve_hf,
    resolve_hps,
    resolve_open_clip,
)
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 77
PICKSCORE_MIDPOINT, PICKSCORE_SCALE = 21.0, 1.5
HPS_MIDPOINT, HPS_SCALE = 30.0, 2.0  # on 100 · cos, the scale of the HPS v2.1 benchmark


def pickscore_to_100(raw: float) -> float:
    return 100.0 / (1.0 + math.exp(-(raw - PICKSCORE_MIDPOINT) / PICKSCORE_SCALE))


def clip_score_to_100(cosine: float) -> float:
    return 100.0 * min(1.0, 2.5 * max(cosine, 0.0))


def hps_to_100(cosine: float) -> float:
    return 100.0 / (1.0 + math.exp(-(100.0 * cosine - HPS_MIDPOINT) / HPS_SCALE))


def aesthetic_to_100(rating: float) -> float:
    return min(100.0, max(0.0, (rating - 1.0) / 9.0 * 100.0))


class AestheticHead(nn.Module):
    """LAION improved aesthetic predictor; layer indices match its state dict (layers.0/2/4/6/7)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


def load_aesthetic_head(path: str, device: str) -> AestheticHead:
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticHead(input_size=state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.to(device).eval()


def load_hps(sources: ModelSources, device: str, precision: str):
    """HPSv2.1: (model, preprocess, tokenizer). open_clip reads HPS's checkpoint (its weights under
    "state_dict"); preprocessing is HPS's own (the longest side to the input size, zero padding:
    open_clip's "longest" resize mode), not CLIP's centre crop."""
    import open_clip

    name, weights = resolve_hps(sources)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device,
                                                                 precision=precision, image_resize_mode="longest")
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def projected(features) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output is the projected embedding."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def normalised(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


class ModelScorer:
    name = "models"
    scores_consistency = True

    def __init__(self, sources: ModelSources | None = None, device: str | None = None, with_hps: bool = False):
        self.sources = sources or ModelSources()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.with_hps = with_hps
        self.hps_model = None  # loaded by setup() when with_hps

    @classmethod
    def from_loaded(cls, *, pick_model, pick_processor, clip_model, clip_preprocess, clip_tokenizer, aesthetic,
                    device: str) -> "ModelScorer":
        """A scorer around models already in memory (the benchmark's random full-size weights)."""
        scorer = cls(device=device)
        scorer.pick_model, scorer.pick_processor = pick_model, pick_processor
        scorer.clip_model, scorer.clip_preprocess, scorer.clip_tokenizer = clip_model, clip_preprocess, clip_tokenizer
        scorer.aesthetic = aesthetic
        return scorer

    def setup(self) -> None:
        """Load the models once (HPS only ``with_hps``); raises WeightsMissing when one is not here."""
        import open_clip
        from transformers import AutoProcessor, CLIPModel

        s = self.sources
        self.pick_model = CLIPModel.from_pretrained(resolve_hf(s.pickscore_model, "pickscore_model"),
                                                    local_files_only=True, dtype=self.dtype).to(self.device).eval()
        self.pick_processor = AutoProcessor.from_pretrained(resolve_hf(s.pickscore_processor, "pickscore_processor"),
                                                            local_files_only=True)
        name = clip_model_name(s.clip_model)
        weights, quick_gelu = resolve_open_clip(name, s.clip_pretrained, s.clip_quick_gelu)
        precision = "fp16" if self.dtype == torch.float16 else "fp32"
        self.clip_model, _, self.clip_preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=self.device, force_quick_gelu=quick_gelu, precision=precision)
        self.clip_model.eval()
        self.clip_tokenizer = open_clip.get_tokenizer(name)
        self.aesthetic = load_aesthetic_head(resolve_file(s.aesthetic_weights, s, "aesthetic_weights"), self.device)
        if self.with_hps:
            self.hps_model, self.hps_preprocess, self.hps_tokenizer = load_hps(s, self.device, precision)

    @torch.inference_mode()
    def pickscore_raw(self, batch: Batch) -> list[float]:
        image_inputs = self.pick_processor(images=batch.candidates, return_tensors="pt").to(self.device)
        # Padded to the longest prompt of the pass: the causal text tower reads each prompt's end token
        # before any padding, so padding changes its embedding only by rounding (docs/scoring.md).
        text_inputs = self.pick_processor(text=batch.prompts, padding=True, truncation=True, max_length=CONTEXT_LENGTH,
                                          return_tensors="pt").to(self.device)
        image_embeds = normalised(projected(self.pick_model.get_image_features(
            pixel_values=image_inputs["pixel_values"].to(self.dtype))))
        text_embeds = normalised(projected(self.pick_model.get_text_features(**text_inputs)))
        return batch.per_candidate(self.pick_model.logit_scale.float().exp() * image_embeds, text_embeds)

    @torch.inference_mode()
    def clip_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.clip_preprocess(image) for image in images]).to(self.device, self.dtype)
        return normalised(self.clip_model.encode_image(batch))

    @torch.inference_mode()
    def clip_text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.clip_tokenizer(prompts).to(self.device)  # open_clip truncates (and pads) to 77 tokens
        return normalised(self.clip_model.encode_text(tokens))

    @torch.inference_mode()
    def hps_raw(self, batch: Batch) -> list[float]:
        images = torch.stack([self.hps_preprocess(image) for image in batch.candidates]).to(self.device, self.dtype)
        image_embeds = normalised(self.hps_model.encode_image(images))
        text_embeds = normalised(self.hps_model.encode_text(self.hps_tokenizer(batch.prompts).to(self.device)))
        return batch.per_candidate(image_embeds, text_embeds)

    def score(self, prompt: str, images: list[Image.Image],
              input_images: list[Image.Image] | None = None) -> list[MetricScores]:
        return self.score_groups([ScoreGroup(prompt, images, input_images)])[0]

    @torch.inference_mode()
    def score_groups(self, groups: list[ScoreGroup]) -> list[list[MetricScores]]:
        """Several frames' candidates in one forward pass per model: the image towers over every
        frame's candidates (and, for consistency, input images), the text towers over the distinct
        prompts. Only the per-frame products are taken frame by frame, in the shapes a frame alone
        has, so each frame gets what ``score`` gives it alone, up to the rounding a matmul's batch
        shape brings (docs/scoring.md, "Batched across frames")."""
        batch = Batch(groups)
        results = [MetricScores() for _ in batch.candidates]
        try:
            for result, raw in zip(results, self.pickscore_raw(batch), strict=True):
                result.pickscore = round(pickscore_to_100(raw), 4)
                result.pickscore_raw = raw
        except Exception as error:  # one metric failing must not lose the others
            log.warning("PickScore failed: %s", error)
            for result in results:
                result.errors["pickscore"] = str(error)
        try:
            embeddings = self.clip_embeddings(batch.candidates + batch.inputs)  # one pass for both
            candidates, inputs = embeddings[:len(batch.candidates)], embeddings[len(batch.candidates):]
            cosines = batch.per_candidate(candidates, self.clip_text_embeddings(batch.prompts))
            ratings = self.aesthetic(candidates).squeeze(-1).tolist()  # float32 head on float32 embeddings
            consistency = batch.consistency(candidates, inputs)
            for i, result in enumerate(results):
                result.clip_score = round(clip_score_to_100(cosines[i]), 4)
                result.aesthetic = round(aesthetic_to_100(ratings[i]), 4)
                result.consistency = [round(c, 6) for c in consistency[i]] if consistency[i] else None
        except Exception as error:
            log.warning("CLIP-Score/aesthetic failed: %s", error)
            for result in results:
                result.errors["clip_score"] = result.errors["aesthetic"] = str(error)
        if self.hps_model is not None:
            try:
                for result, raw in zip(results, self.hps_raw(batch), strict=True):
                    result.hps, result.hps_raw = round(hps_to_100(raw), 4), raw
            except Exception as error:
                log.warning("HPS failed: %s", error)
                for result in results:
                    result.errors["hps"] = str(error)
        return batch.split(results)


class Batch:
    """Where each frame's candidates, input images and prompt sit in a pass over several frames."""

    def __init__(self, groups: list[ScoreGroup]):
        self.prompts = list(dict.fromkeys(group.prompt for group in groups))
        self.candidates = [image for group in groups for image in group.images]
        self.inputs = [image for group in groups for image in group.input_images or []]
        self.frames: list[tuple[slice, slice, int]] = []  # candidates, inputs, prompt row
        candidate, given = 0, 0
        for group in groups:
            inputs = len(group.input_images or [])
            self.frames.append((slice(candidate, candidate + len(group.images)), slice(given, given + inputs),
                                self.prompts.index(group.prompt)))
            candidate, given = candidate + len(group.images), given + inputs

    def per_candidate(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
        """Each candidate's product with its own frame's prompt."""
        return [value for candidates, _, prompt in self.frames
                for value in (image_embeds[candidates] @ text_embeds[prompt:prompt + 1].T).squeeze(-1).tolist()]

    def consistency(self, candidates: torch.Tensor, inputs: torch.Tensor) -> list[list[float] | None]:
        """Each candidate's cosine to each input image of its own frame (None: the frame has none)."""
        return [row for own, given, _ in self.frames
                for row in ((candidates[own] @ inputs[given].T).tolist() if given.stop > given.start
                            else [None] * (own.stop - own.start))]

    def split(self, results: list[MetricScores]) -> list[list[MetricScores]]:
        return [results[candidates] for candidates, _, _ in self.frames]
