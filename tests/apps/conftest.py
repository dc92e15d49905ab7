import sys
from pathlib import Path

# The scenario helpers (tests/scenarios.py) and the load tool live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
