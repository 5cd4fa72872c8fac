"""`python -m fasterrcnn_edu ...` runs the command-line interface (see `fasterrcnn_edu.cli`)."""
from fasterrcnn_edu.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
