"""Providers: what launches and terminates a pool's machines (``autoscaler.protocols.Provider``).

``local`` runs the simulated ASR node as detached processes on 127.0.0.1; ``fake`` keeps instances
in memory and records calls for tests; the cloud providers live beside them. Modules are imported
by name so that using one never imports another's SDK.
"""
