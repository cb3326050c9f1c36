"""prodml-hello: a data source that makes a small deterministic frame."""
