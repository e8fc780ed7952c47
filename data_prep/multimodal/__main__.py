"""`python -m omni_data_prep.multimodal <kind> ...`: the preprocessing command of a sample kind
(cli)."""
import sys

from omni_data_prep.multimodal.cli import dispatch

dispatch(sys.argv[1:])
