import sys
from pathlib import Path

# The sample app is not installed on the controller; import it from
# examples/taskapp (the kit's package is installed in .venv, editable).
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "taskapp"))
sys.path.insert(0, str(ROOT / "kit"))
