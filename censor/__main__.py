"""``python -m censor``: the command line (censor/cli/main.py)."""

from censor.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
