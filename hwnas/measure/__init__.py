"""Measurement, the core of every backend: the `Backend` interface and its shared timing loop with
trackers (latency, peak memory, other processes' load) and the config every runtime shares
(`backend`); what can be measured — a whole sub-network or an operator block — as plain data
(`graphs.GraphSpec`) and its build; and the worker protocol that measures one graph in a fresh
process (`worker`, `python -m hwnas.measure.worker`). A runtime plugin (`hwnas_backends.*`) is only
its `Backend` subclass, its config dataclass and its declared capabilities."""
