"""`python -m components.drift`: a documented user command, kept stable; the code is components.monitoring.drift."""
from components.monitoring.drift import main

if __name__ == "__main__":
    raise SystemExit(main())
