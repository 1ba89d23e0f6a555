"""The contract with a main app that does not import framefleet: the closed set of errors as it
receives them, the callback it may name, and the JSON Schemas `framefleet schema` prints."""

from __future__ import annotations

import json

import pytest
from celery import Celery
from framefleet.tasks.job.errors import ERRORS, BudgetRefused, JobExists, JobNotFound, RequestError, RevisionRefused
from framefleet.tasks.job.records import TASK_RESULTS
from framefleet.tasks.job.requests import Callback
from framefleet.workers.cli import contract_schema, main
from pydantic import ValidationError


@pytest.mark.parametrize("error", [RequestError("clips.0.end_prompt: String should have at least 1 character"),
                                   JobNotFound("job_id: no job 'promo-42'"),
                                   JobExists("job_id: a job 'promo-42' already exists"),
                                   RevisionRefused("job_id: job 'promo-42' is still running revision 1"),
                                   BudgetRefused("overrides.max_usd: this revision needs at least 0.08 USD")])
def test_a_main_app_without_framefleet_gets_the_error_by_name_with_the_field_first(error):
    backend = Celery(backend="cache+memory://").backend
    sent = json.loads(json.dumps(backend.prepare_exception(error, "json")))  # what travels is JSON
    sent["exc_module"] = "framefleet_is_not_installed_here"  # as in a main app's process
    received = backend.exception_to_python(sent)
    assert type(received).__name__ == type(error).__name__
    assert str(received) == str(error) and str(received).startswith(f"{error.field}: ")
    assert not str(error).startswith("'")  # no KeyError quotes


def test_the_error_set_is_closed_and_distinct():
    assert [e.__name__ for e in ERRORS] == ["RequestError", "JobNotFound", "JobExists", "RevisionRefused",
                                             "BudgetRefused"]
    assert not any(issubclass(a, b) for a in ERRORS for b in ERRORS if a is not b)  # one name each


@pytest.mark.parametrize("task, queue, field", [
    ("framefleet.jobs.finalize", "app", "task"),  # the fleet would run its own task with the payload
    ("celery.chord_unlock", "app", "task"),
    ("app.done", "images", "queue"),  # a fleet queue
    ("app.done", "framefleet:job:other:history", "queue"),  # any Redis key
    ("app.done", "unacked", "queue"),  # kombu's own key
    ("app done", "app", "task"),
])
def test_a_callback_must_be_the_main_apps_own_task_and_queue(task, queue, field):
    with pytest.raises(ValidationError) as refused:
        Callback(task=task, queue=queue)
    assert refused.value.errors()[0]["loc"] == (field,)


def test_a_main_apps_callback_is_accepted():
    assert Callback(task="app.storyboard_done", queue="app-callbacks").queue == "app-callbacks"


def test_schema_prints_every_tasks_result_the_event_and_the_status(capsys):
    for name in TASK_RESULTS:
        assert main(["schema", "result", name]) == 0
        schema = json.loads(capsys.readouterr().out)
        assert schema["$schema"].endswith("2020-12/schema")
    assert contract_schema("result", "list")["type"] == "array"
    assert set(contract_schema("event")["properties"]) == {"state", "stage", "message", "percent", "frame", "revision"}
    assert "percent" in contract_schema("status")["properties"]
    assert main(["schema", "result"]) == 2
    assert "kind: `framefleet schema result` needs one of" in capsys.readouterr().err
