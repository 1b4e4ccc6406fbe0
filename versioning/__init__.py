"""Versions of the agents: snapshot bundles (`bundle`), serving one (`loader`), the registry and
activation history (`registry`), Temporal's Worker Deployment (`deployment`), the rules of
activate / rollback / delete (`activation`), diffs (`diff`), shadow sampling and comparison
(`shadow`) and the divergence detector (`divergence/`)."""
