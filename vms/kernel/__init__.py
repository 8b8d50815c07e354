"""The shared kernel: what the hub and the edge agent both speak.

GB/T 28181 IDs (``ids``), the agent ↔ hub protocol (``protocol``), durable file writes
(``fsutil``), time parsing (``timeutil``) and config-file loading (``configio``). It imports
nothing of the hub or the agent; the analysis core (``vms.analysis``) sits beside it on the same
terms. The agent's install (``pip install ".[agent]"``) needs only these two.
"""
