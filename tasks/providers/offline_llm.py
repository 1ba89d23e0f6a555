"""Rule-based two-agent enhancer: the embedded default, no network and no key.

Rubric of the Prompt Engineer (each 0-100, overall = mean of the five):
- completeness: share of the six visual aspects present (shot type, lens, lighting,
  composition, palette, style);
- specificity: 25 + 2.5 per distinct content word (4+ letters), capped at 100;
- professionalism: 100 - 20 per vague word ("nice", "beautiful", ...), capped at 0;
- cinematography: 25 per camera aspect present (shot type, lens, lighting, composition);
- brand_alignment: 40, + 30 with a style, + 30 with a palette.
The Creative Director adds up to two of the aspects the critique names as missing per round
and drops vague words, so a bare prompt climbs over about three rounds.
Each call's simulated latency is drawn from a LatencyProfile by (context, call number).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time

from framefleet.tasks.providers.agents import DIMENSIONS, Critique
from framefleet.tasks.providers.offline_latency import LatencyProfile

# aspect → (words that show it is present, phrases the Creative Director chooses from)
ASPECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "shot type": (
        ("close-up", "wide shot", "medium shot", "establishing shot", "aerial", "full shot", "over-the-shoulder"),
        ("wide establishing shot", "medium shot at eye level", "intimate close-up", "low-angle full shot"),
    ),
    "lens": (
        ("lens", "telephoto", "wide-angle", "anamorphic", "macro", "depth of field"),
        ("35mm lens", "50mm lens with shallow depth of field", "85mm portrait lens", "anamorphic lens"),
    ),
    "lighting": (
        ("lighting", "light", "backlit", "golden hour", "chiaroscuro", "neon glow", "sunlight", "daylight"),
        ("soft golden-hour side lighting", "low-key lighting with a cold rim light", "diffused overcast daylight"),
    ),
    "composition": (
        ("rule-of-thirds", "rule of thirds", "composition", "symmetrical", "leading lines", "foreground"),
        ("rule-of-thirds composition with leading lines", "symmetrical centred composition",
         "layered composition with foreground depth"),
    ),
    "palette": (
        ("palette", "colour", "colours", "color", "colors", "tones", "hues", "monochrome"),
        ("teal and amber colour palette", "muted earth-tone palette", "high-contrast complementary colours"),
    ),
    "style": (
        ("cinematic", "photorealistic", "film still", "illustration", "painterly", "concept art", "film photograph"),
        ("cinematic film still, photorealistic detail", "painterly concept-art style",
         "35mm film photograph, fine grain"),
    ),
}
CAMERA_ASPECTS = ("shot type", "lens", "lighting", "composition")
VAGUE_WORDS = ("nice", "beautiful", "cool", "amazing", "awesome", "good", "stuff", "things", "very")
ASPECTS_PER_ROUND = 2


def present_aspects(prompt: str) -> list[str]:
    text = prompt.lower()
    # Whole words only: "lighthouse" says nothing about lighting.
    return [aspect for aspect, (markers, _) in ASPECTS.items()
            if any(re.search(rf"\b{re.escape(m)}\b", text) for m in markers)]


def vague_words(prompt: str) -> list[str]:
    words = re.findall(r"[a-z]+", prompt.lower())
    return [w for w in words if w in VAGUE_WORDS]


def rubric(prompt: str) -> dict[str, float]:
    present = set(present_aspects(prompt))
    content_words = {w for w in re.findall(r"[a-z]+", prompt.lower()) if len(w) >= 4}
    return {
        "completeness": round(100 * len(present) / len(ASPECTS), 1),
        "specificity": min(100.0, 25 + 2.5 * len(content_words)),
        "professionalism": max(0.0, 100.0 - 20 * len(vague_words(prompt))),
        "cinematography": 25.0 * len(present & set(CAMERA_ASPECTS)),
        "brand_alignment": 40.0 + 30 * ("style" in present) + 30 * ("palette" in present),
    }


def _choose(options: tuple[str, ...], seed_text: str) -> str:
    digest = hashlib.sha256(seed_text.encode()).digest()
    return options[digest[0] % len(options)]


class OfflinePromptAgents:
    name = "offline"

    def __init__(self, latency: LatencyProfile | float = 0.0, context: str = ""):
        # A number is a fixed latency in seconds; ``context`` (job/frame) keys the draws.
        self.latency = latency if isinstance(latency, LatencyProfile) else LatencyProfile(median_s=latency)
        self.context = context
        self._calls = itertools.count()
        self.usage = {"llm_calls": 0}  # counted like the real agents' calls (cost ledger, budget tests)

    def next_latency_s(self) -> float:
        """The simulated latency of the next call (each call draws once, in order)."""
        self.usage["llm_calls"] += 1
        return self.latency.draw(f"llm/{self.context}/{next(self._calls)}")

    def creative_director(self, original: str, current: str, critique: Critique | None) -> str:
        time.sleep(self.next_latency_s())
        missing = critique.missing if critique else [a for a in ASPECTS if a not in present_aspects(current)]
        text = re.sub(r"\b(" + "|".join(VAGUE_WORDS) + r")\b\s*", "", current, flags=re.IGNORECASE).strip()
        additions = [_choose(ASPECTS[aspect][1], original + aspect) for aspect in missing[:ASPECTS_PER_ROUND]]
        return ", ".join([text.rstrip(" ,.")] + additions)

    def prompt_engineer(self, prompt: str) -> Critique:
        time.sleep(self.next_latency_s())
        scores = rubric(prompt)
        missing = [aspect for aspect in ASPECTS if aspect not in present_aspects(prompt)]
        notes = []
        if missing:
            notes.append("Add " + ", ".join(missing) + ".")
        if vague := vague_words(prompt):
            notes.append("Replace vague words: " + ", ".join(sorted(set(vague))) + ".")
        if scores["specificity"] < 100:
            notes.append("Name concrete subjects, materials and textures.")
        overall = round(sum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS), 1)
        return Critique(scores=scores, overall=overall, critique=" ".join(notes) or "Production ready.",
                        missing=missing)
