"""Subcommands of the label-studio-decomp command line, one module each."""
