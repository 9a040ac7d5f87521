"""Defense modules, one per family (installed as privlab.defenses)."""
