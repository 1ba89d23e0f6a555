"""A job's frame records and their state machine.

The records of the last finished revision live in the job's ``frames`` hash, one field per frame.
The first run builds there; a later revision builds beside them the frames it changes (field
``draft:{frame}``), and reading a frame sees its draft record where there is one. Finalize merges
the draft into the frames; a cancel or a failed start drops it, so the last finished revision is
never touched until the next one finishes. Each record's view (state, clip, selected image: what a
dispatch reads of every frame) is kept beside it in the ``views`` hash, field for field, written in
the same script as the record.

Every change of a frame goes through ``transition``: one compare-and-set (a script that writes
only if the record read is still there, retried on a conflict) that checks the step's expectation
(its state, revision, round) and the transition table (job/states.py) before it writes. A late or
duplicate step is refused there (``StaleWrite``), so it can never write an old state back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Callable, NamedTuple

import redis
from framefleet.tasks.job import metrics
from framefleet.tasks.job.errors import JobNotFound
from framefleet.tasks.job.records import FrameRecord
from framefleet.tasks.job.redis import ScriptCall, chain, packed, script_then_reads
from framefleet.tasks.job.states import FRAME_TRANSITIONS, SETTLED, FrameState

if TYPE_CHECKING:
    from framefleet.tasks.job.model import Job

Change = Callable[[FrameRecord], None]
Expect = Callable[[FrameRecord], bool]


class StaleWrite(Exception):
    """A step asked for a frame change that is no longer legal: the frame has moved on."""


DRAFT = "draft:"  # the running revision's record of a frame: field "draft:{frame}" beside "{frame}"


class FrameView(NamedTuple):
    """What a dispatch reads of every frame: its state, clip and selected image. Each frame's view
    is kept in the job's ``views`` hash beside its record, written with it in the same script, so a
    dispatch reads a few bytes a frame however large the records grow."""

    state: FrameState
    clip: int | None
    selected_key: str | None

    @classmethod
    def of(cls, record: FrameRecord) -> FrameView:
        return cls(record.state, record.clip, record.selected.frame_key if record.selected else None)

    def dump(self) -> str:
        return json.dumps([self.state.value, self.clip, self.selected_key])

    @classmethod
    def load(cls, raw: str) -> FrameView:
        state, clip, selected_key = json.loads(raw)
        return cls(FrameState(state), clip, selected_key)


class FrameViews(Mapping[str, FrameView]):
    """Every frame's view, as the running revision sees it (its draft's over the finished frame's),
    and ``records``: the records of some frames read in the same round trip (their HMGET replies:
    ``Frames.record_of``)."""

    def __init__(self, views: dict[str, FrameView], records: dict[str, list] | None = None):
        self._views = views
        self.records = records or {}

    @classmethod
    def load(cls, raw: dict[str, str], records: dict[str, list] | None = None) -> FrameViews:
        """From the views hash as read (HGETALL), and the records read beside it."""
        return cls({name: FrameView.load(value) for name, (_, value) in current_fields(raw).items()}, records)

    @classmethod
    def of_records(cls, records: Mapping[str, FrameRecord]) -> FrameViews:
        return cls({name: FrameView.of(record) for name, record in records.items()})

    def __getitem__(self, name: str) -> FrameView:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def settled(self) -> int:
        """How many frames are settled (selected, failed or skipped)."""
        return sum(view.state in SETTLED for view in self._views.values())

    def selections(self) -> dict[str, str]:
        """Each frame's selected image, where it has one."""
        return {name: view.selected_key for name, view in self._views.items() if view.selected_key is not None}


def current_fields(raw: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each frame's current field and value in the frames hash or the views hash (as read): its
    draft's where it has one."""
    current = {name: (name, value) for name, value in raw.items() if not name.startswith(DRAFT)}
    current.update({name.removeprefix(DRAFT): (name, value) for name, value in raw.items() if name.startswith(DRAFT)})
    return current


class FrameRecords(Mapping[str, FrameRecord]):
    """Every frame's record as read (``Frames.all``), each parsed when it is first looked up, and
    this mapping's own (its caller may change it)."""

    def __init__(self, raw: dict[str, str]):
        self._raw = raw  # frame name → its current record's JSON
        self._parsed: dict[str, FrameRecord] = {}

    def __getitem__(self, name: str) -> FrameRecord:
        if name not in self._parsed:
            self._parsed[name] = FrameRecord.model_validate_json(self._raw[name])
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __len__(self) -> int:
        return len(self._raw)


class Frames:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys
        # Each frame's record as this Job last read or wrote it (field, JSON): a transition tries
        # it first and reads again only when the compare-and-set finds it moved on.
        self._last: dict[str, tuple[str, str]] = {}
        # Replies read ahead (Job.prefetch_*): the next read of the same record or views returns them.
        self._primed: dict[str, list] = {}
        self._primed_views: dict[str, str] | None = None
        # (closed, the views, the records named) as read right after this Job's last transition
        # with ``read_after``.
        self._after: tuple[bool, dict[str, str], dict[str, list]] | None = None

    def prime(self, name: str, reply: list) -> None:
        self._primed[name] = reply

    def prime_views(self, raw: dict[str, str]) -> None:
        self._primed_views = raw

    def closed_after_transition(self) -> bool:
        """Whether the job is closed (cancelled or finalizing), as this Job's last transition with
        ``read_after`` saw it right after its write, or as read now."""
        if self._after is None:
            return self.job.closed()
        return self._after[0]

    def read_after_transition(self) -> tuple[bool, dict[str, str], dict[str, list]] | None:
        """(closed, the views hash, the records named) as the last transition with ``read_after``
        read them, once."""
        seen, self._after = self._after, None
        return seen

    def all(self) -> FrameRecords:
        """Every frame's record, as the running revision sees it (its draft over the finished frames)."""
        return self.parse_all(self.r.hgetall(self.keys.frames))

    def views(self) -> FrameViews:
        """Every frame's view, as the running revision sees it (read ahead where it was)."""
        raw, self._primed_views = self._primed_views, None
        return self.parse_views(self.r.hgetall(self.keys.views) if raw is None else raw)

    def rewrite_views(self) -> None:
        """Write every frame's view again from its record, in one transaction (retried when a record
        changes meanwhile): resume repairs the views of a job that a fleet version keeping none
        changed (a rolling upgrade), or gives a job created by one its views."""
        def rewrite(pipe: redis.client.Pipeline) -> None:
            records, ttl_ms = pipe.hgetall(self.keys.frames), pipe.pttl(self.keys.frames)
            pipe.multi()
            pipe.delete(self.keys.views)
            if records and ttl_ms > 0:
                pipe.hset(self.keys.views, mapping={field: FrameView.of(FrameRecord.model_validate_json(raw)).dump()
                                                    for field, raw in records.items()})
                pipe.pexpire(self.keys.views, ttl_ms)

        self.r.transaction(rewrite, self.keys.frames)

    def views_read(self) -> tuple:
        """The Redis read of every frame's view (its reply: ``parse_views``)."""
        return ("HGETALL", self.keys.views)

    def parse_views(self, raw: dict[str, str], records: dict[str, list] | None = None) -> FrameViews:
        """``views`` from the views hash as read (HGETALL), with ``records`` read beside it. A job
        without one (created by a fleet version that kept none) has its views made from its records."""
        return FrameViews.load(raw, records) if raw else FrameViews.of_records(self.all())

    def record_of(self, views: FrameViews, name: str) -> FrameRecord:
        """Frame ``name``'s record as read with ``views``, in the same round trip, or read now."""
        reply = views.records.get(name)
        if reply is None:
            reply = self.r.execute_command(*self.read_command(name))
        return self.parse(name, reply)

    def read_all_command(self) -> tuple:
        """The Redis read of every frame (its reply: ``parse_all``)."""
        return ("HGETALL", self.keys.frames)

    def parse_all(self, raw: dict[str, str]) -> FrameRecords:
        """``all`` from the frames hash as read (HGETALL)."""
        if not raw:
            raise JobNotFound(f"job_id: no job {self.job.id!r}")
        current = current_fields(raw)
        self._last.update(current)
        return FrameRecords({name: value for name, (_, value) in current.items()})

    def get(self, name: str) -> FrameRecord:
        if name in self._primed:
            return self.parse(name, self._primed.pop(name))
        return FrameRecord.model_validate_json(self._read(name)[1])

    def read_command(self, name: str) -> tuple:
        """The Redis read of frame ``name``'s record (its reply: ``parse``)."""
        return ("HMGET", self.keys.frames, DRAFT + name, name)

    def parse(self, name: str, reply: list[str | None]) -> FrameRecord:
        return FrameRecord.model_validate_json(self._current(name, reply)[1])

    def _read(self, name: str) -> tuple[str, str]:
        """(the field the frame's current record is in, the record)."""
        return self._current(name, self.r.execute_command(*self.read_command(name)))

    def _current(self, name: str, reply: list[str | None]) -> tuple[str, str]:
        draft, finished = reply
        if (draft or finished) is None:
            raise JobNotFound(f"job_id: no job {self.job.id!r} with a frame {name!r}")
        self._last[name] = (DRAFT + name, draft) if draft is not None else (name, finished)
        return self._last[name]

    def transition(self, name: str, to: FrameState, change: Change | None = None, *, expect: Expect,
                   revision: int | None = None, measured: metrics.Increments | None = None,
                   read_after: tuple[str, ...] | None = None, while_open: bool = False, also: tuple[tuple, ...] = (),
                   then: ScriptCall | None = None) -> FrameRecord:
        """Move frame ``name`` to state ``to`` and apply ``change``, in one compare-and-set
        (read, check, write only if the record read is still there; else read again). The record
        this Job last read or wrote is tried first, without a read.

        ``expect`` says whether the record is still the one the step worked from: the state it
        left the frame in, its revision, its round. A record it refuses, or a transition
        FRAME_TRANSITIONS does not allow, raises StaleWrite and nothing is written. ``revision``:
        a revision after the first takes the frame into its draft (choose, regenerate, re-chaining).
        The fallbacks the change adds, and ``measured`` (the step's stage seconds), are counted in
        the fleet's metrics once the write succeeded, so once (job/metrics.py). ``read_after``: for
        the dispatch that follows (Job.frames_while_open), whether the job is closed, every frame's
        view and the records of these frames (those it may start) are read right after the write,
        in the same round trip. ``while_open``: refused
        (StaleWrite) once the job is cancelled or finalizing, checked in the same script. ``also``:
        Redis write commands run in the same script once the record is written, and only then.
        ``then``: a script call chained after the write (``chain``: a status write reporting it), run
        once the record is written, and only then.
        """
        reads = () if read_after is None else (("EXISTS", self.keys.cancelled, self.keys.finalized), self.views_read(),
                                               *(self.read_command(frame) for frame in read_after))
        known = self._last.pop(name, None)
        while True:
            field, raw = known or self._read(name)
            record = FrameRecord.model_validate_json(raw)
            refused = (f"{name} has moved on ({record.state}, revision {record.revision})" if not expect(record)
                       else None if to in FRAME_TRANSITIONS[record.state]
                       else f"{name}: {record.state} cannot become {to}")
            if refused and known:  # what this Job read earlier may be out of date: only the current one is refused
                known = None
                continue
            if refused:
                raise StaleWrite(refused)
            notes_before = Counter((note.kind, note.text) for note in record.notes)
            if change is not None:
                change(record)
            record.enter(to)
            target = DRAFT + name if revision else field
            # New fallbacks only: a revision clears a frame's notes and keeps its enhancement's.
            added = Counter((note.kind, note.text) for note in record.notes if note.is_fallback) - notes_before
            fallbacks = [{metrics.field("fallbacks_total", kind=kind.value): n} for (kind, _), n in added.items()]
            written = record.model_dump_json()
            closing = [self.keys.cancelled, self.keys.finalized] if while_open else []
            call = ScriptCall("swap_frame", [self.keys.frames, self.keys.views, *closing],
                              [field, raw, target, written, DRAFT + name, FrameView.of(record).dump(), *packed(also)])
            if then is not None:
                call = chain(call, then)
            reply, after = script_then_reads(self.r, call.name, call.keys, call.args, reads)
            swapped = reply[0] if then is not None else reply
            if swapped == -1:
                raise StaleWrite(f"{name}: the job is closed")
            if swapped:
                self._last[name] = (target, written)
                if read_after is not None:
                    closed, views, *records = after
                    self._after = (bool(closed), views, dict(zip(read_after, records)))
                metrics.add(metrics.merged(measured or {}, *fallbacks))
                return record
            known = None

    def draft_names(self) -> list[str]:
        return sorted(name.removeprefix(DRAFT) for name in self.r.hkeys(self.keys.frames) if name.startswith(DRAFT))

    def end_revision_call(self, keep: bool) -> ScriptCall:
        """The running revision ends: its draft records become the job's frames (``keep``) or go,
        and its task ids go (commit_draft.lua; its reply: the frames the draft held)."""
        return ScriptCall("commit_draft", [self.keys.frames, self.keys.tasks, self.keys.views],
                          [DRAFT, "commit" if keep else "drop"])

    def keep_finished(self, name: str) -> bool:
        """Take frame ``name`` out of the running revision: it keeps the last finished revision's
        record. False when the revision had not taken it."""
        pipe = self.r.pipeline()
        pipe.hdel(self.keys.frames, DRAFT + name)
        pipe.hdel(self.keys.views, DRAFT + name)
        return bool(pipe.execute()[0])
