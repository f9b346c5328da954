"""``python -m rnnkit.cli``: the command line."""

from rnnkit.cli import main

main()
