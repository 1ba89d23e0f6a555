"""Celery tasks (``framefleet.tasks.pipeline``) and the plain job logic they call.

Only ``framefleet.tasks.pipeline`` imports Celery; requests, plan, records and enhancement are plain Python.
"""
