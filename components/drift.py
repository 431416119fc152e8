"""`python -m components.drift`: a documented user command, kept stable; the code is components.ops.drift."""
from components.ops.drift import main

if __name__ == "__main__":
    raise SystemExit(main())
