"""Training objectives shared by several chapters (components.md, section 6).

Modules are imported directly: ``from replibook.losses import vae``.
"""
