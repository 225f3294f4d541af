"""Metrics sources: where the pool's signals come from. ``prometheus.PrometheusSource`` queries a
Prometheus server; ``fake.FakeMetricsSource`` answers from values a test sets;
``file_sd`` writes the target file that tells Prometheus which nodes to scrape.
"""
