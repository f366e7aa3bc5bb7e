from aipc.cli.main import main

raise SystemExit(main())
