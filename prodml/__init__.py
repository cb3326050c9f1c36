"""prodml: take a Keras model from features to a served endpoint with one YAML file.

Plugin authors import from :mod:`prodml.plugin`; ``prodml.hookimpl`` stays for plugins
written before it.
"""

from prodml.core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
