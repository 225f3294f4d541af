"""Balancers: who receives traffic. ``nginx.NginxBalancer`` rewrites an upstream file and reloads
nginx; ``fake.FakeBalancer`` records calls for tests. Each implements ``protocols.Balancer``.
"""
