from seg4seg_utils.cli import main

raise SystemExit(main())
