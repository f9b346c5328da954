"""``python -m rnnkit.serve RUN...``: the same as ``rnnkit serve``."""

from rnnkit.serve.command import serve

serve()
