"""The service contract shared by the API and the worker. Imports neither FastAPI nor torch."""
