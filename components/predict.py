"""`python -m components.predict`: a documented user command, kept stable; the code is components.serving.predict."""
from components.serving.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
