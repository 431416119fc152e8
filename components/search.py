"""`python -m components.search`: a documented user command, kept stable; the code is components.serving.search."""
from components.serving.search import main

if __name__ == "__main__":
    raise SystemExit(main())
