from lorakiln.cli import main

raise SystemExit(main())
