"""The command line: app.py holds the Typer app and main(); one module per command."""
