"""The `crewline` command: entry points on top of everything else (the embedded stack, the worker
and API processes, and the client commands that talk to the API)."""
