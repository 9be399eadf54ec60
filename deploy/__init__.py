"""Service-manager templates (launchd LaunchAgents, systemd user units) that `mlxctl service install` renders.

A data package: the templates ship inside the installed mlxserve as `mlxserve.deploy`.
"""
