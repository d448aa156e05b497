"""Paper-specific code, one module per chapter (``methods/<slug_with_underscores>.py``)."""
