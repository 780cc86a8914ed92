from softdirty.cli import main

raise SystemExit(main())
