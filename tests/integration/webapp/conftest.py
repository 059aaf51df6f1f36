"""UI server fixtures (defined in test_server_helpers.py): ``start_ui`` and ``ui``."""

from tests.integration.webapp.test_server_helpers import start_ui, ui

__all__ = ["start_ui", "ui"]
