"""Which scorer a gpu worker loads, and the `framefleet score` / `models check` commands."""

from __future__ import annotations

import json
import logging

import pytest
from framefleet.config.settings import get_settings
from framefleet.tasks.runtime import bootstrap
from framefleet.workers.cli import main
from PIL import Image

from tests.tiny_models import build_tiny_models, sources_env


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    return sources_env(build_tiny_models(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def env(monkeypatch):
    def apply(values: dict[str, str]):
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        bootstrap._load_scorer.cache_clear()

    yield apply
    get_settings.cache_clear()
    bootstrap._load_scorer.cache_clear()


def test_auto_with_missing_weights_falls_back_to_the_labelled_heuristic(env, tmp_path, caplog):
    env({"FRAMEFLEET_SCORER": "auto", "FRAMEFLEET_AESTHETIC_WEIGHTS": str(tmp_path / "absent.pth"),
         "FRAMEFLEET_PICKSCORE_MODEL": str(tmp_path / "absent")})
    with caplog.at_level(logging.WARNING):
        assert bootstrap.scorer_name() == "heuristic"
        assert bootstrap.process_scorer().name == "heuristic"
    assert "HEURISTIC" in caplog.text and "aesthetic_weights" in caplog.text


def test_auto_with_every_weight_present_loads_the_models(env, tiny_env):
    env({**tiny_env, "FRAMEFLEET_SCORER": "auto"})
    assert bootstrap.scorer_name() == "models"
    assert bootstrap.process_scorer() is bootstrap.process_scorer()  # loaded once per process


def test_score_command_uses_the_configured_models(env, tiny_env, tmp_path, capsys):
    env(tiny_env)
    paths = []
    for i, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (48, 32), colour).save(paths[-1])
    assert main(["score", "--prompt", "a red door", *paths, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == paths
    assert all(r["scorer"] == "models" and r["overall"] is not None and r["pickscore"] is not None for r in rows)
    (tmp_path / "broken.png").write_text("not an image")
    assert main(["score", "--prompt", "x", str(tmp_path / "broken.png")]) == 2


def test_models_check_reports_each_model(env, tiny_env, tmp_path, capsys):
    env(tiny_env)
    assert main(["models", "check"]) == 0
    env({"FRAMEFLEET_AESTHETIC_WEIGHTS": str(tmp_path / "absent.pth")})
    assert main(["models", "check"]) == 1
    assert "aesthetic_weights    missing" in capsys.readouterr().out


def test_models_check_needs_the_hps_weights_only_when_the_score_weights_use_them(env, tiny_env, tmp_path, capsys):
    env({**tiny_env, "FRAMEFLEET_HPS_WEIGHTS": str(tmp_path / "absent.pt")})
    assert main(["models", "check"]) == 0
    assert "not used: FRAMEFLEET_SCORE_WEIGHTS gives hps 0" in capsys.readouterr().out
    env({"FRAMEFLEET_SCORE_WEIGHTS": '{"pickscore": 0.5, "hps": 0.5}', "FRAMEFLEET_SCORER": "auto"})
    assert main(["models", "check"]) == 1
    assert bootstrap.scorer_name() == "heuristic"  # auto: a weighted model that is missing
    env({"FRAMEFLEET_HPS_WEIGHTS": tiny_env["FRAMEFLEET_HPS_WEIGHTS"]})
    assert bootstrap.scorer_name() == "models" and bootstrap.process_scorer().hps_model is not None
