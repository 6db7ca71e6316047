from vggtune.cli import main

raise SystemExit(main())
