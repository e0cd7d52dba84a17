"""`python -m imgtrain.cli`: the imgtrain command, for a process that has no console script on its PATH."""

from imgtrain.cli import main

main()
