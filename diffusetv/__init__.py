"""DiffuseTV: a DDIM model served over HTTP. This package holds the `diffusetv` command line."""
