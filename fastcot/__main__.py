from fastcot.cli import main

raise SystemExit(main())
