"""Pigeon: a self-hostable, Orangepill-compatible messaging-channels service."""

__version__ = "0.1.0"
