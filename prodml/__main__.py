from prodml.cli import entry

raise SystemExit(entry())
