"""`python -m components.replay`: a documented user command, kept stable; the code is components.ops.replay."""
from components.ops.replay import main

if __name__ == "__main__":
    raise SystemExit(main())
