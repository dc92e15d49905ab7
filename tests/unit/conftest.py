import sys
from pathlib import Path

# The sample app is not installed on the controller; import it from app/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))
