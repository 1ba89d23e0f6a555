"""Where each model's weights come from: one declarative registry, resolved without downloading.

Each source is a hub id, an open_clip name or tag, a local path, or (aesthetic) a URL. Workers
only ever *resolve* to local files (a local directory, a file, or the Hugging Face cache) and
raise WeightsMissing otherwise; `framefleet models download` is the one place that downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

DEFAULT_SOURCES = {
    "pickscore_model": "yuvalkirstain/PickScore_v1",
    "pickscore_processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "clip_model": "ViT-L-14",
    "clip_pretrained": "openai",
    "aesthetic_weights": "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                         "sac+logos+ava1-l14-linearMSE.pth",
    # HPSv2.1 (tgxs002/HPSv2): an open_clip ViT-H-14 fine-tuned on HPD v2; its checkpoint holds the
    # whole model's state dict under "state_dict".
    "hps_model": "ViT-H-14",
    "hps_weights": "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
}
# Loaded only when the score weights use it (FRAMEFLEET_SCORE_WEIGHTS "hps" > 0): its absence is
# then no reason to fall back to the heuristic scorer.
OPTIONAL_MODELS = ("hps_weights",)


class WeightsMissing(RuntimeError):
    """The weights of a model are not on this machine (nothing is downloaded during a task)."""


class ModelSources(BaseModel):
    pickscore_model: str = DEFAULT_SOURCES["pickscore_model"]
    pickscore_processor: str = DEFAULT_SOURCES["pickscore_processor"]
    clip_model: str = DEFAULT_SOURCES["clip_model"]
    clip_pretrained: str = DEFAULT_SOURCES["clip_pretrained"]
    aesthetic_weights: str = DEFAULT_SOURCES["aesthetic_weights"]
    hps_model: str = DEFAULT_SOURCES["hps_model"]
    hps_weights: str = DEFAULT_SOURCES["hps_weights"]
    # Only read when clip_pretrained is a file: OpenAI's CLIP weights were trained with QuickGELU.
    clip_quick_gelu: bool = False
    cache_dir: str | None = None  # where URL weights are kept (default ~/.cache/framefleet)


def framefleet_cache(sources: ModelSources) -> Path:
    return Path(sources.cache_dir or Path.home() / ".cache" / "framefleet")


def resolve_hf(source: str, field: str) -> str:
    """A local directory, or a hub id already in the Hugging Face cache."""
    if Path(source).is_dir():
        return source
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    for filename in ("config.json", "preprocessor_config.json"):
        try:
            if isinstance(try_to_load_from_cache(source, filename), str):
                return source
        except HFValidationError:  # a path that does not exist, not a hub id
            break
    raise WeightsMissing(f"{field}: {source!r} is neither a local directory nor in the Hugging Face cache")


def clip_model_name(source: str) -> str:
    """An open_clip name, or a model-config JSON registered under its file stem."""
    if source.endswith(".json"):
        import open_clip

        path = Path(source)
        if not path.is_file():
            raise WeightsMissing(f"clip_model: no model config at {source}")
        open_clip.add_model_config(path)
        return path.stem
    return source


def resolve_open_clip(model_name: str, pretrained: str, quick_gelu: bool = False) -> tuple[str, bool]:
    """(weights file, quick_gelu) for a weights file or an open_clip tag found in the HF cache."""
    if Path(pretrained).is_file():
        return pretrained, quick_gelu
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    config = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not config:
        raise WeightsMissing(f"clip_pretrained: {pretrained!r} is neither a file nor a tag of {model_name}")
    repo, filename = os.path.split(config.get("hf_hub", ""))
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        cached = try_to_load_from_cache(repo, name) if repo else None
        if isinstance(cached, str):
            return cached, bool(config.get("quick_gelu", False))
    raise WeightsMissing(f"clip_pretrained: {model_name}/{pretrained} is not in the Hugging Face cache")


def resolve_file(source: str, sources: ModelSources, field: str) -> str:
    """A local file, or a URL whose file `framefleet models download` put in the cache."""
    if urlparse(source).scheme in ("http", "https"):
        cached = framefleet_cache(sources) / Path(urlparse(source).path).name
        if cached.is_file():
            return str(cached)
        raise WeightsMissing(f"{field}: {source} has not been downloaded to {cached}")
    if Path(source).is_file():
        return source
    raise WeightsMissing(f"{field}: no file at {source}")


def resolve_hps(sources: ModelSources) -> tuple[str, str]:
    """(open_clip model name, checkpoint file) of the HPS model."""
    return clip_model_name(sources.hps_model), resolve_file(sources.hps_weights, sources, "hps_weights")


def check_sources(sources: ModelSources) -> dict[str, str]:
    """Each model → where its weights are, or 'missing: why'."""
    report = {}
    checks = {
        "pickscore_model": lambda: resolve_hf(sources.pickscore_model, "pickscore_model"),
        "pickscore_processor": lambda: resolve_hf(sources.pickscore_processor, "pickscore_processor"),
        "clip": lambda: resolve_open_clip(clip_model_name(sources.clip_model), sources.clip_pretrained)[0],
        "aesthetic_weights": lambda: resolve_file(sources.aesthetic_weights, sources, "aesthetic_weights"),
        "hps_weights": lambda: resolve_hps(sources)[1],
    }
    for name, check in checks.items():
        try:
            report[name] = check()
        except WeightsMissing as error:
            report[name] = f"missing: {error}"
    return report


def missing_models(report: dict[str, str], with_hps: bool) -> dict[str, str]:
    """The models a scorer that loads HPS only ``with_hps`` cannot do without."""
    return {name: where for name, where in report.items() if where.startswith("missing")
            and (with_hps or name not in OPTIONAL_MODELS)}


def download_all(sources: ModelSources, target: Path) -> dict[str, str]:
    """Fetch every model into ``target`` (needs internet); returns the settings to use them."""
    import urllib.request

    import open_clip
    from huggingface_hub import snapshot_download

    target.mkdir(parents=True, exist_ok=True)
    pickscore = snapshot_download(sources.pickscore_model, local_dir=target / "pickscore")
    processor = snapshot_download(sources.pickscore_processor, local_dir=target / "pickscore-processor",
                                  allow_patterns=["*.json", "*.txt"])
    name = clip_model_name(sources.clip_model)
    clip_file = open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, sources.clip_pretrained),
                                              cache_dir=str(target / "open_clip"))
    aesthetic, hps = (target / Path(urlparse(url).path).name for url in (sources.aesthetic_weights,
                                                                         sources.hps_weights))
    for url, path in ((sources.aesthetic_weights, aesthetic), (sources.hps_weights, hps)):
        if not path.exists():
            urllib.request.urlretrieve(url, path)  # noqa: S310 (a configured https URL)
    quick_gelu = open_clip.get_pretrained_cfg(name, sources.clip_pretrained).get("quick_gelu", False)
    return {"FRAMEFLEET_PICKSCORE_MODEL": pickscore, "FRAMEFLEET_PICKSCORE_PROCESSOR": processor,
            "FRAMEFLEET_CLIP_MODEL": sources.clip_model, "FRAMEFLEET_CLIP_PRETRAINED": clip_file,
            "FRAMEFLEET_CLIP_QUICK_GELU": str(bool(quick_gelu)).lower(),
            "FRAMEFLEET_AESTHETIC_WEIGHTS": str(aesthetic), "FRAMEFLEET_HPS_MODEL": sources.hps_model,
            "FRAMEFLEET_HPS_WEIGHTS": str(hps)}
