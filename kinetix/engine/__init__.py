"""Training and evaluation on Lightning: modules, data modules, optimisers, metrics, multi-view."""
