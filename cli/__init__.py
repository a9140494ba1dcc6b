"""fednode.cli: the `fednode` command (typer). It only parses, calls and prints."""
