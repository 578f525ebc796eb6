class ModelStoreError(Exception):
    """A model cannot be found, read or trusted. The message is meant for the user, without a traceback."""
