"""Celery tasks (``tasks.pipeline``) and the plain job logic they call.

Only ``tasks.pipeline`` imports Celery; requests, plan, records and enhancement are plain Python.
"""
