"""Settings, the queue/routing table and logging setup shared by every worker."""

from framefleet.config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
