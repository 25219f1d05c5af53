#!/usr/bin/env bash
# The prognosis extras (pyradiomics, lifelines). pyradiomics 3.1 publishes no wheel for this
# Python and its sdist does not build in pip's isolated build environment, so 3.0.1 is built
# against the installed numpy (--no-build-isolation) after its build helpers. Best effort: when
# it fails, the prognosis tests are skipped with the reason, everything else still runs.
set -uo pipefail
if python3 -c "import radiomics, lifelines" 2>/dev/null; then exit 0; fi
python3 -m pip install --quiet versioneer PyWavelets pykwalify "lifelines>=0.27" \
  && python3 -m pip install --quiet --no-build-isolation "pyradiomics==3.0.1" \
  || echo "note: the prognosis extras (pyradiomics, lifelines) could not be installed; their tests will be skipped" >&2
exit 0
