"""The agent runtime — part of every version bundle: agent specs and prompts, the LLM call path,
tools, and the activities the pipeline workflow runs.

`RECORDS_INTERFACE` is the host's records interface (`records.INTERFACE`) this code is written
against; a snapshot's manifest records it, and a worker serves only bundles whose interface it
provides. Bump it together with `records.INTERFACE` (a test keeps the tree's two equal).
"""

RECORDS_INTERFACE = 1
