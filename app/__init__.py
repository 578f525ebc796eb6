"""The DiffuseTV HTTP API. Never imports torch or `diffusion`."""
