"""`imgtrain bench`: the sections (run.py) and the notes' own code (notes.py) they run against imgtrain."""

from imgtrain.bench import notes  # noqa: F401  (imgtrain.bench.notes: the notes' models, reached as an attribute in docs)
