"""``python -m upperson``: the command line."""

from upperson.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
