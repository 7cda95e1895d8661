"""Command-line interface: ``jaxparams inspect|convert|merge|quantize|demo``."""

from jaxparams.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
