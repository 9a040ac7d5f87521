"""Attack modules, one per family (installed as privlab.attacks)."""
