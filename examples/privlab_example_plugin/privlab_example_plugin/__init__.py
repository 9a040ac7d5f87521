"""An example privlab plug-in: one attack and one data set, registered by entry points."""
