"""Notebook-side code (parent process): the ``%%distgen`` magic and the widget gallery."""
