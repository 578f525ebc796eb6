"""The DiffuseTV worker: loads models once, runs DDIM, encodes PNGs."""
