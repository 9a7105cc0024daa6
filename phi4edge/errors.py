"""Errors a user can act on: each names the file, tensor or field at fault."""


class Phi4EdgeError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero."""


class CheckpointError(Phi4EdgeError):
    """The input checkpoint folder is missing something or is malformed."""


class BundleError(Phi4EdgeError):
    """A bundle is missing, corrupt or does not fit the request."""


class RequestError(Phi4EdgeError):
    """A request (prompt, media, sampling settings) that cannot be served as given."""
