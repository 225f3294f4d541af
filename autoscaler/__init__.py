"""An autoscaler for GPU inference fleets.

Three parts you can see in the folders: ``metrics/`` (observe), ``policy/`` (a pure decision
engine) and ``providers/`` + ``balancers/`` (act), joined by ``controller.py`` and ``store/``.
"""

__version__ = "0.1.0"
