"""Importers: models trained elsewhere, converted once into store versions (DESIGN.md, Model kinds).

Each reads a foreign format, checks it, and publishes the next version of a name as the store's own
safetensors and `model.json`. A served model is always the store's files; a pickle is never served.
"""
