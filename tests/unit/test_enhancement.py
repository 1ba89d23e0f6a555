import json

import pytest
from framefleet.tasks.artifacts.keys import agent1_trace_name, agent2_trace_name
from framefleet.tasks.providers.agents import Critique
from framefleet.tasks.providers.offline_llm import ASPECTS, OfflinePromptAgents, present_aspects, rubric
from framefleet.tasks.steps.enhance import enhance_prompt_iterative


class ScriptedAgents:
    """Agents whose Prompt Engineer returns a scripted sequence of overall scores."""

    name = "scripted"

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = 0

    def creative_director(self, original, current, critique):
        self.calls += 1
        return f"{original} v{self.calls}"

    def prompt_engineer(self, prompt):
        overall = self.scores.pop(0)
        return Critique(scores={}, overall=overall, critique="more detail")


def run(scores, **kwargs):
    traces = {}
    options = {"max_iterations": 4, "score_threshold": 85, "convergence_epsilon": 0.5, **kwargs}
    result = enhance_prompt_iterative("p", ScriptedAgents(scores), trace=traces.__setitem__, **options)
    return result, traces


def test_trace_names_follow_the_seeds():
    assert [agent1_trace_name(i) for i in (1, 2, 4)] == [
        "01_agent1_iteration_1.txt", "03_agent1_iteration_2.txt", "07_agent1_iteration_4.txt"]
    assert agent2_trace_name(2) == "04_agent2_iteration_2.txt"
    _, traces = run([50, 60, 70, 80])
    assert list(traces)[:5] == ["00_original_prompt.txt", "01_agent1_iteration_1.txt", "02_agent2_iteration_1.txt",
                                "03_agent1_iteration_2.txt", "04_agent2_iteration_2.txt"]
    assert {"final_enhanced_prompt.txt", "prompt_trace_summary.json"} <= set(traces)


def test_stops_at_threshold():
    result, _ = run([60, 86, 99])
    assert result.stop_reason == "threshold" and len(result.rounds) == 2 and result.final_score == 86


def test_stops_at_iteration_cap():
    result, _ = run([10, 20, 30, 40, 50], max_iterations=3)
    assert result.stop_reason == "max_iterations" and len(result.rounds) == 3


def test_stops_on_convergence_and_keeps_the_best_not_the_last():
    result, traces = run([70, 65])
    assert result.stop_reason == "converged" and len(result.rounds) == 2
    assert result.final_prompt == "p v1" and result.best_iteration == 1 and result.final_score == 70
    assert traces["final_enhanced_prompt.txt"] == "p v1"
    summary = json.loads(traces["prompt_trace_summary.json"])
    assert [r["overall"] for r in summary["rounds"]] == [70, 65]


def test_improvement_within_epsilon_counts_as_converged():
    result, _ = run([70, 70.4], convergence_epsilon=0.5)
    assert result.stop_reason == "converged" and result.final_score == 70.4


def test_rubric_scores_each_dimension():
    bare = rubric("a nice cat")
    assert bare["completeness"] == 0 and bare["cinematography"] == 0 and bare["brand_alignment"] == 40
    assert bare["professionalism"] == 80  # one vague word
    full = rubric("wide establishing shot, 35mm lens, golden hour lighting, rule of thirds composition, "
                  "teal palette, cinematic film still of a keeper")
    assert full["completeness"] == 100 and full["cinematography"] == 100 and full["brand_alignment"] == 100


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_every_phrase_of_the_creative_director_is_recognised(aspect):
    for phrase in ASPECTS[aspect][1]:
        assert aspect in present_aspects(phrase)


def test_offline_agents_climb_to_the_threshold_and_are_deterministic():
    first = enhance_prompt_iterative("A keeper climbs the nice stairs", OfflinePromptAgents(),
                                     max_iterations=4, score_threshold=85, convergence_epsilon=0.5)
    again = enhance_prompt_iterative("A keeper climbs the nice stairs", OfflinePromptAgents(),
                                     max_iterations=4, score_threshold=85, convergence_epsilon=0.5)
    assert first.stop_reason == "threshold" and first.final_score >= 85
    assert [r.critique.overall for r in first.rounds] == sorted(r.critique.overall for r in first.rounds)
    assert "nice" not in first.final_prompt and first.final_prompt == again.final_prompt
    assert set(present_aspects(first.final_prompt)) == set(ASPECTS)
