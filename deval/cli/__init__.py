"""The typer command line: one module per command group; only this package parses options."""
