"""Scoring library: scorers, normalisation and ranking. Imports no Celery, Redis or S3."""

from framefleet.scoring.ranking import Ranked, contributions, overall_score, rank_images_by_quality
from framefleet.scoring.registry import SCORERS, create_scorer
from framefleet.scoring.types import METRICS, MetricScores, ScoreGroup, Scorer

__all__ = ["METRICS", "SCORERS", "MetricScores", "Ranked", "ScoreGroup", "Scorer", "contributions", "create_scorer",
           "overall_score", "rank_images_by_quality"]
