"""Where the captured device bodies live in a source checkout (beside the repository)."""

from pathlib import Path

# <checkout>/simulators/paths.py -> <checkout>/../shared/conformance. A wrong path fails nothing by
# itself (the simulators fall back to their embedded bodies), so tests compare it with their own.
CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"
