"""One module per CLI subcommand; app/cli.py registers them."""
