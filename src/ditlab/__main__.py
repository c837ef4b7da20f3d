"""``python -m ditlab`` is the same as the ``ditlab`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
