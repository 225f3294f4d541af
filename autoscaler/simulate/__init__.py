"""Dry-run: replay demand through the live decision engine against a simulated fleet.

``scenario`` (the scenario file), ``traces`` and ``demand`` (traces → concurrent streams),
``fleet`` (the tick loop around ``policy.engine.decide``), ``oracle`` (the cheapest schedule
knowing the future), ``run`` (one demand, several policies and the baselines), ``report`` and
``recommend`` (the outputs), ``commands`` (``autoscaler dry-run``). See ``docs/dry-run.md``.
"""
