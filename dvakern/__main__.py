"""`python -m dvakern`: print which backends and compiled extensions are active."""
import argparse
import json

import dvakern

argparse.ArgumentParser(prog="python -m dvakern", description=__doc__).parse_args()
print(json.dumps(dvakern.info(), indent=1))
