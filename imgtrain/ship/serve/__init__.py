"""Serving a trained model over HTTP (`imgtrain serve`)."""

from imgtrain.ship.serve.app import create_app

__all__ = ["create_app"]
