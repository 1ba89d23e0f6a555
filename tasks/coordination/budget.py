"""The budget guard: a job with ``overrides.max_usd`` never commits more than its cap.

Before each paid call its estimated price is reserved atomically in Redis (one Lua script, so
parallel variations and enhancements of one job cannot pass the check together); a call that
does not fit is not made. When the next frame cannot be afforded at full size it degrades, in
this order:
  1. fewer variations (down to one),
  2. no enhancement rounds beyond the first (a later round must leave affordable one image for
     each frame still to generate and the first round of each other frame still waiting for its
     enhancement),
  3. the frame is skipped with "budget" in its fallbacks.
A judged frame reserves both of its judge calls at once (one answer alone cannot cancel position
bias); when they do not fit, the frame keeps its score order (a JUDGE_BUDGET note).
Prices are the cost settings: Replicate per prediction of the job's model; OpenAI per call from
the text the call carries (about 4 characters a token: the frame's prompt, and the rewrite the
Prompt Engineer reviews) plus ``llm_call_estimate_tokens`` (the instructions and critique around
it, and the least a reply takes), so a long prompt reserves what it will cost; a judge call at the
judge's prices, its images at OpenAI's low-detail count. The offline
providers cost ``offline_usd_per_image`` and ``offline_usd_per_llm_call`` (0 by default), so the
guard can be exercised without keys.
"""

from __future__ import annotations

from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.job.model import Job
from framefleet.tasks.job.spec import JobSpec
from framefleet.tasks.job.states import SETTLED, FrameState
from framefleet.tasks.providers.judges import LOW_DETAIL_IMAGE_TOKENS


def image_price(spec: JobSpec, model: str, settings: Settings) -> float:
    if spec.providers.get("images") == "replicate":
        return settings.prediction_usd(model)
    return settings.offline_usd_per_image


def prompt_tokens(text: str) -> int:
    """Tokens of a text as the providers are estimated everywhere here: about 4 characters a token."""
    return -(-len(text) // 4)


def llm_call_price(spec: JobSpec, settings: Settings, prompt: str) -> float:
    """One LLM call that sends ``prompt`` (with its instructions) and gets the estimated reply."""
    if spec.providers.get("llm") == "openai":
        around, reply = settings.llm_call_estimate_tokens
        return settings.tokens_usd(around + prompt_tokens(prompt), reply)
    return settings.offline_usd_per_llm_call


def llm_round_price(spec: JobSpec, settings: Settings, prompt: str, iteration: int = 1) -> float:
    """One enhancement round for ``prompt``: the Creative Director sends it (from the second round
    on with the current rewrite too) and writes a rewrite at least as long, as it keeps every
    detail; the Prompt Engineer then sends that rewrite for review and gets the estimated reply."""
    if spec.providers.get("llm") != "openai":
        return 2 * settings.offline_usd_per_llm_call
    around, reply = settings.llm_call_estimate_tokens
    sent = prompt_tokens(prompt)
    rewrite = max(sent, reply)
    director = settings.tokens_usd(around + sent + (rewrite if iteration > 1 else 0), rewrite)
    engineer = settings.tokens_usd(around + rewrite, reply)
    return director + engineer


def judge_call_price(spec: JobSpec, settings: Settings, prompt: str, images: int) -> float:
    """One judge call: the frame's prompt and ``images`` images, with instructions, and a reply."""
    if spec.providers.get("judge") != "openai":
        return settings.offline_usd_per_llm_call
    around, reply = settings.llm_call_estimate_tokens
    sent = around + prompt_tokens(prompt) + images * LOW_DETAIL_IMAGE_TOKENS
    return (sent * settings.judge_usd_per_1m_prompt_tokens + reply * settings.judge_usd_per_1m_completion_tokens) / 1e6


class BudgetGuard:
    def __init__(self, job: Job, spec: JobSpec):
        self.job, self.spec, self.settings = job, spec, get_settings()
        self.cap = spec.config.max_usd

    @property
    def active(self) -> bool:
        return self.cap is not None

    def reserve(self, amount: float, keep_free: float = 0.0) -> bool:
        if not self.active or amount <= 0:
            return True
        return self.job.budget.reserve(self.cap, amount, keep_free)

    def images_for_frame(self, frame: str, wanted: int, model: str, round_id: str) -> int:
        """How many variations of the frame's round ``round_id`` the budget affords (reserved now),
        from ``wanted`` down to 1; 0 means the frame is skipped. Each degradation is recorded. A
        round that is sent again (resume, watchdog) gets the count reserved the first time."""
        if (reserved := self.job.budget.round_reservation(round_id)) is not None:
            return reserved
        count = self._affordable(frame, wanted, model)
        self.job.budget.set_round_reservation(round_id, count)
        return count

    def _affordable(self, frame: str, wanted: int, model: str) -> int:
        price = image_price(self.spec, model, self.settings)
        for count in range(wanted, 0, -1):
            if self.reserve(count * price):
                if count < wanted:
                    self.degrade(frame, f"{count} of {wanted} variations")
                return count
        self.degrade(frame, "skipped: not even one image is affordable")
        return 0

    def another_image(self, frame: str, model: str, why: str) -> bool:
        if self.reserve(image_price(self.spec, model, self.settings)):
            return True
        self.degrade(frame, f"no {why}")
        return False

    def llm_round(self, frame: str, iteration: int, prompt: str) -> bool:
        """Reserve one enhancement round (two calls) for the frame's ``prompt``. The first round needs
        only itself; a later one must leave what the job has promised affordable (``promised``)."""
        price = llm_round_price(self.spec, self.settings, prompt, iteration)
        if self.reserve(price, self.promised(frame) if iteration > 1 else 0.0):
            return True
        self.degrade(frame, f"enhancement stopped before round {iteration}")
        return False

    def promised(self, frame: str) -> float:
        """What a later enhancement round of ``frame`` must leave free: one image for each frame still
        to generate, and the first round of each other frame still waiting for its enhancement.
        Enhancements run in parallel, so a first round that another frame has already reserved is
        counted too: a race can only stop a later round, never take an image's share."""
        promised = 0.0
        for record in self.job.frames.all().values():
            if record.state in SETTLED:
                continue
            config = self.spec.frame_config(record)
            promised += image_price(self.spec, config.image_model, self.settings)
            if record.state is FrameState.WAITING and record.name != frame and config.enhance:
                promised += llm_round_price(self.spec, self.settings, record.original_prompt)
        return promised

    def judge_calls(self, frame: str, calls: int, prompt: str, images: int) -> bool:
        """Reserve ``calls`` judge calls of the frame together, or none."""
        if self.reserve(calls * judge_call_price(self.spec, self.settings, prompt, images)):
            return True
        self.degrade(frame, "no vision judge (score order kept)")
        return False

    def degrade(self, frame: str, what: str) -> None:
        self.job.budget.add_degradation(f"{frame}: budget: {what}")
