"""`make bench-scoring`: the scoring models through the pass a gpu worker runs over several frames.

PickScore's ViT-H/14 CLIP (transformers), open_clip ViT-L/14 and the LAION aesthetic head, through
ModelScorer.score_groups: batches of 4, 16, 32 and 64 images are 1, 4, 8 and 16 frames of 4
candidates, each frame with its own prompt and 2 input images (consistency), as a pass batched
across frames scores them (coordination/score_batch.py). Reports images per second and the latency
of each frame (the pass's: every frame's scores come with it), the FLOPs of one pass (torch's
FlopCounterMode) and the share of the device's peak: on a GPU the datasheet dense peak for the
dtype, on a CPU the float32 matmul rate measured here. The full-size architectures run with random
weights (compute does not depend on the weight values, so they time the real thing); ``--tiny``
runs the tests' tiny models instead (seconds on any CPU: the code path, not the models' speed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from framefleet.scoring import ScoreGroup, create_scorer
from framefleet.scoring.models import AestheticHead, ModelScorer
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

# Dense tensor-core peaks (no sparsity), FLOP/s, for the GPUs this project is benchmarked on.
GPU_PEAKS = {"H100": {torch.float16: 989e12, torch.float32: 67e12}, "H200": {torch.float16: 989e12,
                                                                              torch.float32: 67e12}}
PROMPT = "A lighthouse keeper climbs the spiral stairs at dusk, lantern in hand, cinematic film still"


def pickscore_architecture(device: str, dtype: torch.dtype):
    """yuvalkirstain/PickScore_v1's config: CLIP ViT-H/14 (laion2B), random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_models import build_pickscore_tokenizer

    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu"},
        vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 1280, "intermediate_size": 5120,
                       "num_hidden_layers": 32, "num_attention_heads": 16, "hidden_act": "gelu"},
        projection_dim=1024,
    )
    model = CLIPModel(config).to(device, dtype).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=build_pickscore_tokenizer())
    return model, processor


def build_scorer(device: str, dtype: torch.dtype) -> ModelScorer:
    import open_clip

    pick_model, pick_processor = pickscore_architecture(device, dtype)
    clip_model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-L-14", pretrained=None, device=device, precision="fp16" if dtype == torch.float16 else "fp32")
    scorer = ModelScorer.from_loaded(pick_model=pick_model, pick_processor=pick_processor,
                                     clip_model=clip_model.eval(), clip_preprocess=preprocess,
                                     clip_tokenizer=open_clip.get_tokenizer("ViT-L-14"),
                                     aesthetic=AestheticHead(768).to(device).eval(), device=device)
    scorer.dtype = dtype
    return scorer


def measured_cpu_peak() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    started, runs = time.perf_counter(), 5
    for _ in range(runs):
        torch.mm(a, b)
    return runs * 2 * 2048**3 / (time.perf_counter() - started)


def images(n: int, first: int = 0) -> list[Image.Image]:
    return [Image.effect_mandelbrot((512, 288), (-2.0 + 0.01 * i, -1.0, 1.0, 1.0), 64).convert("RGB")
            for i in range(first, first + n)]


def frames(count: int) -> list[ScoreGroup]:
    """``count`` frames of 4 candidates, each with its own prompt and 2 input images."""
    return [ScoreGroup(f"{PROMPT}, shot {k + 1}", images(4, 6 * k), images(2, 6 * k + 4)) for k in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tiny_scorer(device: str, directory: str) -> ModelScorer:
    from tests.tiny_models import build_tiny_models

    return create_scorer("models", sources=build_tiny_models(Path(directory)), device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="4,16,32,64", help="images per pass, multiples of 4 (frames of 4)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per batch (default 1 CPU full-size, 10 GPU or --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models (CI: the code path in seconds)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    repeats = args.repeats or (10 if device == "cuda" or args.tiny else 1)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak = next((p[dtype] for key, p in GPU_PEAKS.items() if key in name), None) if device == "cuda" \
        else measured_cpu_peak()

    with tempfile.TemporaryDirectory() as directory:
        scorer = tiny_scorer(device, directory) if args.tiny else build_scorer(device, dtype)
        models = "tiny models" if args.tiny else "PickScore ViT-H/14 + ViT-L/14 + aesthetic"
        scorer.score_groups(frames(1))  # warm-up: kernels, allocator
        results = []
        for batch in (int(b) for b in args.batches.split(",")):
            groups = frames(batch // 4)
            with FlopCounterMode(display=False) as counter:
                scorer.score_groups(groups)
            flops = counter.get_total_flops()
            sync(device)
            started = time.perf_counter()
            for _ in range(repeats):
                scorer.score_groups(groups)
            sync(device)
            latency = (time.perf_counter() - started) / repeats
            results.append({"device": name, "dtype": str(dtype), "models": models, "frames": len(groups),
                            "batch": 4 * len(groups), "latency_s": latency, "images_per_s": 4 * len(groups) / latency,
                            "gflop_per_pass": flops / 1e9, "achieved_tflops": flops / latency / 1e12,
                            "peak_share": flops / latency / peak if peak else None,
                            "peak_tflops": peak / 1e12 if peak else None})

    table = Table(title=f"Scoring, one pass over frames of 4: {models}, {name}, {dtype}")
    for column in ("images", "frames", "latency per frame", "images/s", "GFLOP/pass", "TFLOP/s", "share of peak"):
        table.add_column(column, justify="right")
    for r in results:
        share = f"{100 * r['peak_share']:.1f}% of {r['peak_tflops']:.2f}" if r["peak_share"] else "-"
        table.add_row(str(r["batch"]), str(r["frames"]), f"{r['latency_s']:.3f} s", f"{r['images_per_s']:.2f}",
                      f"{r['gflop_per_pass']:.2f}", f"{r['achieved_tflops']:.3f}", share)
    Console(width=120).print(table)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
