"""Tiny scoring models built locally (no downloads), saved the way the real weights are stored.

- PickScore stand-in: a transformers CLIPModel with a tiny config and a tiny byte-level BPE
  tokenizer, saved with save_pretrained (a local directory, like a hub snapshot).
- CLIP: an open_clip model-config JSON (registered under its file stem) and a state-dict file.
- Aesthetic: an MLP state dict with the LAION key names (layers.0/2/4/6/7).
- HPS: another open_clip model config and a checkpoint in HPS's format (``{"state_dict": ...}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from framefleet.scoring.models import AestheticHead
from framefleet.scoring.weights import ModelSources

EMBED_DIM = 16
OPEN_CLIP_CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_pickscore_tokenizer():
    """A byte-level BPE CLIP tokenizer with no merges: every byte is a token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_pickscore(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_pickscore_tokenizer()
    vocab = tokenizer.get_vocab()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=EMBED_DIM,
    )
    CLIPModel(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_open_clip(directory: Path, name: str, seed: int) -> tuple[Path, torch.nn.Module]:
    """An open_clip model of OPEN_CLIP_CONFIG registered as ``name``, with weights drawn from
    ``seed``: (its config file, the model)."""
    import open_clip

    config = directory / f"{name}.json"
    config.write_text(json.dumps(OPEN_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    return config, open_clip.create_model(name)


def build_open_clip(directory: Path) -> tuple[Path, Path]:
    config, model = tiny_open_clip(directory, "framefleet-tiny-clip", seed=1)
    weights = directory / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return config, weights


def build_aesthetic(path: Path) -> Path:
    torch.manual_seed(2)
    torch.save(AestheticHead(input_size=EMBED_DIM).state_dict(), path)
    return path


def build_hps(directory: Path) -> tuple[Path, Path]:
    config, model = tiny_open_clip(directory, "framefleet-tiny-hps", seed=3)
    checkpoint = directory / "tiny-hps.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def build_tiny_models(root: Path) -> ModelSources:
    root.mkdir(parents=True, exist_ok=True)
    pickscore = build_pickscore(root / "pickscore")
    config, weights = build_open_clip(root)
    aesthetic = build_aesthetic(root / "aesthetic.pth")
    hps_config, hps_weights = build_hps(root)
    return ModelSources(pickscore_model=str(pickscore), pickscore_processor=str(pickscore),
                        clip_model=str(config), clip_pretrained=str(weights), aesthetic_weights=str(aesthetic),
                        hps_model=str(hps_config), hps_weights=str(hps_weights))


def sources_env(sources: ModelSources) -> dict[str, str]:
    """The FRAMEFLEET_ variables that point a worker at these models."""
    return {"FRAMEFLEET_SCORER": "models", "FRAMEFLEET_PICKSCORE_MODEL": sources.pickscore_model,
            "FRAMEFLEET_PICKSCORE_PROCESSOR": sources.pickscore_processor,
            "FRAMEFLEET_CLIP_MODEL": sources.clip_model, "FRAMEFLEET_CLIP_PRETRAINED": sources.clip_pretrained,
            "FRAMEFLEET_AESTHETIC_WEIGHTS": sources.aesthetic_weights, "FRAMEFLEET_HPS_MODEL": sources.hps_model,
            "FRAMEFLEET_HPS_WEIGHTS": sources.hps_weights}
