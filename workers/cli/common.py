"""What every command shares: the consoles, the settings, the store, and the errors that are one line."""

from __future__ import annotations

from framefleet.config.settings import Settings, get_settings
from framefleet.tasks.job.errors import ERRORS, RequestError
from framefleet.workers.client import FleetUnavailable
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True, highlight=False)

# The mistakes a user makes: reported as one line, never a traceback (unless --debug).
ORDINARY_ERRORS = (*ERRORS, FleetUnavailable, TimeoutError)


def load_settings() -> Settings:
    """The settings, with a bad environment value reported as the variable that holds it."""
    try:
        return get_settings()
    except ValidationError as error:
        parts = []
        for item in error.errors():
            field, *rest = [str(p) for p in item["loc"]] or ["settings"]
            name = f"FRAMEFLEET_{field.upper()}" if field in Settings.model_fields else field
            parts.append(f"{'.'.join([name, *rest])}: {item['msg']}")
        raise RequestError("; ".join(parts)) from error
    except SettingsError as error:
        raise RequestError(f"settings: {error}") from error


def cli_store():
    """The configured artifact store; a bad ``FRAMEFLEET_STORE_URL`` is a one-line error."""
    from framefleet.tasks.artifacts.store import fleet_store

    try:
        return fleet_store()
    except ValueError as error:  # open_store names store_url and the scheme it does not support
        raise RequestError(str(error)) from error
