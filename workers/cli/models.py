"""Commands on the scoring models: score local images, check or download the weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from framefleet.config.settings import get_settings
from framefleet.tasks.job.requests import RequestError
from framefleet.workers.cli.common import console


def cmd_score(args: argparse.Namespace) -> int:
    """Score local image files with the same scorer a gpu worker would load."""
    from framefleet.scoring import overall_score
    from framefleet.tasks.runtime.bootstrap import process_scorer
    from PIL import Image

    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as error:
            raise RequestError(f"images: {path} is not a readable image ({error})") from None
    scorer = process_scorer()
    weights = get_settings().score_weights.model_dump()
    rows = []
    for path, scores in zip(args.images, scorer.score(args.prompt, images), strict=True):
        rows.append({"image": path, "scorer": scorer.name, **scores.model_dump(exclude={"consistency"}),
                     "overall": overall_score(scores, weights)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            hps = f"  hps {row['hps']}" if row["hps"] is not None else ""
            console.print(f"{row['image']}: overall {row['overall']}  pickscore {row['pickscore']}  "
                          f"clip {row['clip_score']}  aesthetic {row['aesthetic']}{hps}  ({row['scorer']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from framefleet.scoring.weights import OPTIONAL_MODELS, check_sources, download_all, missing_models

    settings = get_settings()
    sources = settings.model_sources()
    if args.action == "download":
        for name, value in download_all(sources, Path(args.dir)).items():
            print(f"{name}={value}")
        return 0
    report = check_sources(sources)
    with_hps = settings.score_weights.hps > 0
    for model, where in report.items():
        unused = model in OPTIONAL_MODELS and not with_hps
        console.print(f"{model:<20} {where}" + ("  (not used: FRAMEFLEET_SCORE_WEIGHTS gives hps 0)" if unused else ""))
    return 1 if missing_models(report, with_hps) else 0


def register(sub) -> None:
    score = sub.add_parser("score", help="score local images against a prompt")
    score.add_argument("--prompt", required=True)
    score.add_argument("images", nargs="+")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_score)
    models = sub.add_parser("models", help="check or prefetch the scoring models' weights")
    models.add_argument("action", choices=("check", "download"))
    models.add_argument("--dir", help="with download: where to put the weights", default="models")
    models.set_defaults(func=cmd_models)
