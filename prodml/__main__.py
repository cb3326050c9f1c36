from prodml.cli import main

raise SystemExit(main())
