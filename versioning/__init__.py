"""Version bundles, shadow runs, divergence and rollback (not built yet: see the open issues)."""
