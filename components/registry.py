"""`python -m components.registry`: a documented user command, kept stable; the code is components.ops.registry."""
from components.ops.registry import main

if __name__ == "__main__":
    raise SystemExit(main())
