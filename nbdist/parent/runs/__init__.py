"""Runs folders: where a run's images go by default (``folders.py``), and opening a saved run again (``opening.py``)."""
