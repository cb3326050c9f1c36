"""``prodml ui``: a local dashboard of a project's runs, model versions and live endpoints.

:mod:`prodml.ui.data` reads what prodml already keeps (run folders, the model store through
the ModelStore interface, prodml.json of each version, the history of ``latest``, the
running local servers); :mod:`prodml.ui.app` renders it as server-side HTML with Starlette
and Jinja2, imported only when the dashboard starts so ``prodml --help`` stays fast.
"""
