def __getattr__(name: str) -> object:
    """Submodules as attributes, imported on first use (`imgtrain.analysis.plots` after `import imgtrain`)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
