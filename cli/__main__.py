"""`python -m cli`: the `crewline` command (how the embedded stack starts its worker processes)."""

from cli.main import main

main()
