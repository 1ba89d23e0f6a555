"""A job's frame records and their state machine.

The records of the last finished revision live in the job's ``frames`` hash, one field per frame.
The first run builds there; a later revision builds beside them the frames it changes (field
``draft:{frame}``), and reading a frame sees its draft record where there is one. Finalize merges
the draft into the frames; a cancel or a failed start drops it, so the last finished revision is
never touched until the next one finishes.

Every change of a frame goes through ``transition``: one compare-and-set (a script that writes
only if the record read is still there, retried on a conflict) that checks the step's expectation
(its state, revision, round) and the transition table (job/states.py) before it writes. A late or duplicate step is refused there
(``StaleWrite``), so it can never write an old state back.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Callable, NamedTuple

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
    """What a dispatch reads of every frame: its state, clip and selected image."""

    state: FrameState
    clip: int | None
    selected_key: str | None

    @classmethod
    def of(cls, record: FrameRecord) -> FrameView:
        return cls(record.state, record.clip, record.selected.frame_key if record.selected else None)


VIEWS_CACHED = 16_384  # frame views a process keeps, one per frame (about 300 bytes each)


class _ViewCache:
    """Each frame's view with the digest of the record it was read from, by (job, frame), least
    recently used first: a frame's new record replaces its old view."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start empty (a forked child: it may also have copied a held lock)."""
        self.views: OrderedDict[tuple[str, str], tuple[bytes, FrameView]] = OrderedDict()
        self.lock = threading.Lock()

    def view(self, job_id: str, name: str, raw: str) -> FrameView:
        """The view of frame ``name``'s record ``raw`` (its JSON, as stored). A record keeps its
        revisions' history, so it has no size bound: what is kept is its digest."""
        key, digest = (job_id, name), hashlib.blake2b(raw.encode(), digest_size=16).digest()
        with self.lock:
            kept = self.views.get(key)
            if kept is not None and kept[0] == digest:
                self.views.move_to_end(key)
                return kept[1]
        view = FrameView.of(FrameRecord.model_validate_json(raw))
        with self.lock:
            self.views[key] = (digest, view)
            self.views.move_to_end(key)
            while len(self.views) > VIEWS_CACHED:
                self.views.popitem(last=False)
        return view


# Every dispatch reads every frame of its job, and most have not changed since the last (settled
# frames do not): a job's dispatches parse only the records that changed, not all of them each time.
_views = _ViewCache()
os.register_at_fork(after_in_child=lambda: _views.forget())


class FrameRecords(Mapping[str, FrameRecord]):
    """Every frame of a job as read (``Frames.all``). A record is parsed when it is first looked up,
    and is this mapping's own (its caller may change it); ``view`` gives a frame's state, clip and
    selection without parsing a record that another read already parsed."""

    def __init__(self, job_id: str, raw: dict[str, str]):
        self._job_id = job_id
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

    def view(self, name: str) -> FrameView:
        if name in self._parsed:  # as its looker-up may have changed it
            return FrameView.of(self._parsed[name])
        return _views.view(self._job_id, name, self._raw[name])

    def views(self) -> dict[str, FrameView]:
        """Every frame's view (no record is parsed unless it changed since this process last read it)."""
        return {name: self.view(name) for name in self._raw}

    def settled(self) -> int:
        """How many frames are settled (selected, failed or skipped)."""
        return sum(view.state in SETTLED for view in self.views().values())


class Frames:
    def __init__(self, job: "Job"):
        self.job, self.r, self.keys = job, job.r, job.keys
        # Each frame's record as this Job last read or wrote it (field, JSON): a transition tries
        # it first and reads again only when the compare-and-set finds it moved on.
        self._last: dict[str, tuple[str, str]] = {}
        # Replies read ahead (Job.prefetch_*): the next read of the same records returns them.
        self._primed: dict[str, list] = {}
        self._primed_all: dict[str, str] | None = None
        # (closed, every frame) as read right after this Job's last transition with ``read_after``.
        self._after_transition: tuple[bool, dict[str, str]] | None = None

    def prime(self, name: str, reply: list) -> None:
        self._primed[name] = reply

    def prime_all(self, raw: dict[str, str]) -> None:
        self._primed_all = raw

    def closed_after_transition(self) -> bool:
        """Whether the job is closed (cancelled or finalizing), as this Job's last transition with
        ``read_after`` saw it right after its write, or as read now."""
        if self._after_transition is None:
            return self.job.closed()
        return self._after_transition[0]

    def read_after_transition(self) -> tuple[bool, dict[str, str]] | None:
        """(closed, the frames hash) as the last transition with ``read_after`` read them, once."""
        seen, self._after_transition = self._after_transition, None
        return seen

    def all(self) -> FrameRecords:
        """Every frame, as the running revision sees it (its draft over the finished frames)."""
        raw, self._primed_all = self._primed_all, None
        return self.parse_all(self.r.hgetall(self.keys.frames) if raw is None else raw)

    def read_all_command(self) -> tuple:
        """The Redis read of every frame (its reply: ``parse_all``)."""
        return ("HGETALL", self.keys.frames)

    def parse_all(self, raw: dict[str, str]) -> FrameRecords:
        """``all`` from the frames hash as read (HGETALL)."""
        if not raw:
            raise JobNotFound(f"job_id: no job {self.job.id!r}")
        current = {name: (name, value) for name, value in raw.items() if not name.startswith(DRAFT)}
        current.update({name.removeprefix(DRAFT): (name, value)
                        for name, value in raw.items() if name.startswith(DRAFT)})
        self._last.update(current)
        return FrameRecords(self.job.id, {name: value for name, (_, value) in current.items()})

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
                   read_after: bool = False, while_open: bool = False, also: tuple[tuple, ...] = (),
                   then: ScriptCall | None = None) -> FrameRecord:
        """Move frame ``name`` to state ``to`` and apply ``change``, in one compare-and-set
        (read, check, write only if the record read is still there; else read again). The record
        this Job last read or wrote is tried first, without a read.

        ``expect`` says whether the record is still the one the step worked from: the state it
        left the frame in, its revision, its round. A record it refuses, or a transition
        FRAME_TRANSITIONS does not allow, raises StaleWrite and nothing is written. ``revision``:
        a revision after the first takes the frame into its draft (choose, regenerate, re-chaining).
        The fallbacks the change adds, and ``measured`` (the step's stage seconds), are counted in
        the fleet's metrics once the write succeeded, so once (job/metrics.py). ``read_after``:
        every frame and whether the job is closed are read right after the write, in the same
        round trip, for the dispatch that follows (Job.frames_while_open). ``while_open``: refused
        (StaleWrite) once the job is cancelled or finalizing, checked in the same script. ``also``:
        Redis write commands run in the same script once the record is written, and only then.
        ``then``: a script call chained after the write (``chain``: a status write reporting it), run
        once the record is written, and only then.
        """
        reads = (("EXISTS", self.keys.cancelled, self.keys.finalized), self.read_all_command()) if read_after else ()
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
            call = ScriptCall("swap_frame", [self.keys.frames, *closing], [field, raw, target, written, DRAFT + name,
                                                                         *packed(also)])
            if then is not None:
                call = chain(call, then)
            reply, after = script_then_reads(self.r, call.name, call.keys, call.args, reads)
            swapped = reply[0] if then is not None else reply
            if swapped == -1:
                raise StaleWrite(f"{name}: the job is closed")
            if swapped:
                if read_after:
                    closed, frames = after
                    self._after_transition = (bool(closed), frames)
                self._last[name] = (target, written)
                metrics.add(metrics.merged(measured or {}, *fallbacks))
                return record
            known = None

    def draft_names(self) -> list[str]:
        return sorted(name.removeprefix(DRAFT) for name in self.r.hkeys(self.keys.frames) if name.startswith(DRAFT))

    def end_revision_call(self, keep: bool) -> ScriptCall:
        """The running revision ends: its draft records become the job's frames (``keep``) or go,
        and its task ids go (commit_draft.lua; its reply: the frames the draft held)."""
        return ScriptCall("commit_draft", [self.keys.frames, self.keys.tasks], [DRAFT, "commit" if keep else "drop"])

    def keep_finished(self, name: str) -> bool:
        """Take frame ``name`` out of the running revision: it keeps the last finished revision's
        record. False when the revision had not taken it."""
        return bool(self.r.hdel(self.keys.frames, DRAFT + name))
