"""What the two prompt agents are, whichever LLM plays them (providers: offline, OpenAI)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

DIMENSIONS = ("completeness", "specificity", "professionalism", "cinematography", "brand_alignment")


class Critique(BaseModel):
    scores: dict[str, float]
    overall: float
    critique: str
    missing: list[str] = []

    def as_text(self) -> str:
        lines = [f"Overall score: {self.overall:.1f}"]
        lines += [f"{name}: {self.scores.get(name, 0):.1f}" for name in DIMENSIONS]
        lines.append(f"Critique: {self.critique}")
        return "\n".join(lines)


class PromptAgents(Protocol):
    name: str

    def creative_director(self, original: str, current: str, critique: Critique | None) -> str: ...
    def prompt_engineer(self, prompt: str) -> Critique: ...
