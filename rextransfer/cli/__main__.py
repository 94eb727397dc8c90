"""`python -m rextransfer.cli` runs the CLI."""

from .app import main

main()
