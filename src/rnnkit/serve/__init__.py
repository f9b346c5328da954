"""Serving trained runs over HTTP: ``rnnkit serve RUN [RUN...]`` (`rnnkit.serve.command`), the
API (`rnnkit.serve.app`), batching of concurrent requests (`rnnkit.serve.batching`) and of
generation streams (`rnnkit.serve.streams`), and the playground page (``static/``).
Needs the ``serve`` extra: ``pip install 'rnnkit[serve]'`` (FastAPI and uvicorn)."""
