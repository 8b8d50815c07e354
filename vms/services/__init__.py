"""The hub's services: each owns one job and is given what it needs (config, the store, callables).

None of them receives the hub; ``vms/hub.py`` builds them and joins them. See docs/architecture.md.
"""
