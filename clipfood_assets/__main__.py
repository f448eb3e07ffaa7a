"""`python -m clipfood_assets`: the `clipfood` command."""

from clipfood_assets.cli import main

raise SystemExit(main())
