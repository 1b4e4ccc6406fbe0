"""crewline: durable multi-agent AI workflows on Temporal (shared plumbing and entry points)."""
