"""Plugins: the modules a recipe names in `plugins`, imported in every process of a run.

A plugin registers a modality (`unimodal.modalities.register_modality`) or an
objective of its own when imported, so it is imported before its recipe is
validated: by the recipe loader (in the CLI, and again in every rank, which
loads the recipe itself) and by each DataLoader worker at its start (a worker
that is forked has it already; one that is spawned does not). Importing is all
that happens: `importlib.import_module`, by name.
"""

from __future__ import annotations

import importlib


def import_plugins(names: list[str]) -> None:
    """Import each module; ImportError names the module that failed."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"plugin {name!r} cannot be imported: {err}") from err
