"""Conformance suites for prodml backends, shipped so third-party plugins can use them.

Subclass the suite of your role and provide its fixtures::

    from prodml.testing.stores import ModelStoreConformance

    class TestMyStore(ModelStoreConformance):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return {"type": "mystore", "root": str(tmp_path)}

Every built-in backend passes the same suites against a real server.
"""

from prodml.testing.base import BackendConformance

__all__ = ["BackendConformance"]
