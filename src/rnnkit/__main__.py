"""``python -m rnnkit`` (and ``torchrun ... -m rnnkit``): the command line."""

from rnnkit.cli import main

main()
