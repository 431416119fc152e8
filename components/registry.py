"""`python -m components.registry` (= `deepfusion registry`): kept stable; the code is components.lifecycle.registry."""
from components.lifecycle.registry import main

if __name__ == "__main__":
    raise SystemExit(main())
