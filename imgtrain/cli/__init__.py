"""The `imgtrain` command (Typer): app.py holds the commands that train and search, model.py those that take a trained
model, catalog.py the listings."""

from imgtrain.cli.app import main

__all__ = ["main"]
