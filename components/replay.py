"""`python -m components.replay`: a documented user command, kept stable; the code is components.monitoring.replay."""
from components.monitoring.replay import main

if __name__ == "__main__":
    raise SystemExit(main())
