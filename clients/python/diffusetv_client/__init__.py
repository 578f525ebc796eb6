"""A Python client for the DiffuseTV HTTP API (docs/API.md, The Python client)."""
