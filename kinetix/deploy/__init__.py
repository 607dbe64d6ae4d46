"""Deployment: export, inference backends and live streaming (:mod:`kinetix.deploy.stream`)."""
