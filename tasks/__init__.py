"""What a worker runs (README, Layout): the Celery app (``app``) and its task entry points
(``entry``), the steps they call (``steps/``), the job model (``job/``), coordination, artifacts,
providers and the worker runtime. Only ``app``, ``entry`` and the coordination and runtime
modules that send or receive tasks import Celery."""
